"""scripts/demo.py: `make demo`'s backbone fits the machine it runs on and says which and why."""

from __future__ import annotations

from molescope.core.registry import DEFAULT_BACKBONE, PIPELINE_BACKBONE
from scripts import demo


def test_auto_picks_by_the_gpus_tensorflow_sees_and_says_why(capsys):
    chosen = demo.choose_backbone(demo.AUTO)
    said = capsys.readouterr().out
    if demo.visible_gpus():
        assert chosen == DEFAULT_BACKBONE and "GPU(s) visible" in said
    else:
        assert chosen == PIPELINE_BACKBONE and "no GPU visible to TensorFlow" in said
    assert said.startswith(f"backbone: {chosen} (") and "BACKBONE=<name>" in said


def test_a_named_backbone_is_used_as_given(capsys):
    assert demo.choose_backbone("resnet50") == "resnet50"
    assert capsys.readouterr().out == ""

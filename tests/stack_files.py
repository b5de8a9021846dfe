"""Readers of the cluster stack's files (docker-compose.yml, .env files, Dockerfiles), shared by the static
tests of tests/unit and tests/cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKER = REPO / "docker"
SPARK_DOCKERFILE = DOCKER / "spark" / "Dockerfile"


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def parse_env_file(path: Path = ENV_EXAMPLE) -> dict[str, tuple[str, list[str]]]:
    """KEY -> (value, comment lines directly above it) of a dotenv file."""
    entries: dict[str, tuple[str, list[str]]] = {}
    comments: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line:
            comments = []
        elif line.startswith("#"):
            comments.append(line.lstrip("# "))
        else:
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=value: {raw!r}"
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            entries[key.strip()] = (value, comments)
            comments = []
    return entries


def env_example_values() -> dict[str, str]:
    return {key: value for key, (value, _comments) in parse_env_file().items()}


def parse(dockerfile: Path) -> DockerfileParser:
    parser = DockerfileParser(path=str(dockerfile), cache_content=True)
    parser.content  # noqa: B018 - reads the file once
    return parser


def final_stage(dockerfile: Path) -> list[dict]:
    structure = parse(dockerfile).structure
    last_from = max(index for index, i in enumerate(structure) if i["instruction"] == "FROM")
    return structure[last_from:]


def build_args(dockerfile: Path) -> dict[str, str]:
    """Defaults of the ARGs declared in the final stage."""
    args = {}
    for item in final_stage(dockerfile):
        if item["instruction"] == "ARG":
            name, _, default = item["value"].partition("=")
            args[name] = default.strip('"')
    return args

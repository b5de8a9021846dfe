"""molescope.scoring.similar: exact cosine top-k (`nearest`) against a pair-by-pair brute force, and
`similar_cases` on a published features table (train and test rows, two batches) and curated table, checked
against `nearest` on the training rows alone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from molescope.core.constants import SPLIT_TEST, SPLIT_TRAIN
from molescope.io.tables import FEATURES_SCHEMA
from molescope.scoring import similar
from molescope.scoring.similar import nearest, neighbour_images, similar_cases
from tests.unit.published_tables import publish_curated, publish_features

DIM = 8
K = 5
TRAIN, TEST = 40, 10
#: Arrow batches of 4 rows regrouped into blocks of >= 6: each partition's running top-k merges several
#: blocks of two batches.
ARROW_BATCH, BLOCK_ROWS = "4", 6
DX_TYPES = ("histo", "follow_up", "consensus", "confocal")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = math.sqrt(float(a @ a)) * math.sqrt(float(b @ b))
    return 0.0 if norms == 0 else float(a @ b) / norms


def brute_force(candidates: np.ndarray, queries: np.ndarray, k: int) -> tuple[list, list]:
    """Pair by pair; ties (equal to 1e-9) go to the lower index."""
    indices, sims = [], []
    for query in queries:
        row = [cosine(query, c) for c in candidates]
        order = sorted(range(len(candidates)), key=lambda j: (-round(row[j], 9), j))[:k]
        indices.append(order)
        sims.append([row[j] for j in order])
    return indices, sims


def random_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """300 candidates with a zero row and repeated rows (exact ties), 6 queries with a zero one and one equal
    to a repeated candidate."""
    rng = np.random.default_rng(seed)
    candidates = rng.normal(size=(300, DIM))
    candidates[17] = 0.0
    candidates[[40, 120, 250]] = candidates[5]  # ties with 5: the lower index first
    candidates[200] = candidates[5] * 2.0  # the same direction: a tie too
    queries = rng.normal(size=(6, DIM))
    queries[1] = 0.0
    queries[3] = candidates[5] * 0.5
    return candidates, queries


# ----------------------------------------------------------------------------------------------- nearest


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 299, 300, 8192])
def test_nearest_matches_brute_force_at_any_chunk_size(chunk_rows):
    candidates, queries = random_data()
    indices, sims = nearest(candidates, queries, K, chunk_rows=chunk_rows)
    expected_indices, expected_sims = brute_force(candidates, queries, K)
    assert indices.tolist() == expected_indices
    np.testing.assert_allclose(sims, expected_sims, atol=1e-12)
    assert indices[3].tolist() == [5, 40, 120, 200, 250]  # tied at 1.0, in index order
    np.testing.assert_allclose(sims[3], 1.0, atol=1e-12)


def test_zero_vectors_have_similarity_zero_never_nan():
    candidates, queries = random_data()
    indices, sims = nearest(candidates, queries, len(candidates))
    assert not np.isnan(sims).any()
    assert indices[1].tolist() == list(range(len(candidates)))  # all tied at 0: index order
    assert (sims[1] == 0.0).all()
    for row in range(len(queries)):
        assert sims[row][indices[row].tolist().index(17)] == 0.0


def test_k_larger_than_the_candidates_returns_all_sorted():
    candidates, queries = random_data()
    indices, sims = nearest(candidates[:4], queries, 10, chunk_rows=3)
    assert indices.shape == sims.shape == (len(queries), 4)
    assert indices.tolist() == brute_force(candidates[:4], queries, 10)[0]
    assert (np.diff(sims, axis=1) <= 0).all()


def test_no_candidates_and_bad_arguments():
    indices, sims = nearest(np.empty((0, DIM)), np.ones((3, DIM)), K)
    assert indices.shape == sims.shape == (3, 0)
    with pytest.raises(ValueError, match="not the same dimension"):
        nearest(np.ones((4, DIM)), np.ones((2, DIM + 1)), K)
    with pytest.raises(ValueError, match="k must be at least 1"):
        nearest(np.ones((4, DIM)), np.ones((2, DIM)), 0)


# ------------------------------------------------------------------------------------------ similar_cases


def image_id(i: int) -> str:
    return f"ISIC_{i:04d}"


def vectors(seed: int = 1) -> np.ndarray:
    """Train rows 0..39, test rows 40..49, as the float32 the features table stores."""
    return np.random.default_rng(seed).normal(size=(TRAIN + TEST, DIM)).astype(np.float32)


def dx_of(i: int) -> str:
    return ("nv", "mel", "bkl", "bcc", "akiec", "vasc", "df")[i % 7]


@pytest.fixture(scope="module")
def stored(spark, tmp_path_factory):
    """A features table (train and test rows, two batches) and a curated table with dx_type."""
    root = tmp_path_factory.mktemp("similar")
    data = vectors()
    rows = [
        (
            image_id(i),
            f"HAM_{i // 2:04d}",
            dx_of(i),
            SPLIT_TRAIN if i < TRAIN else SPLIT_TEST,
            "mobilenet_0.25",
            "test",
            DIM,
            [float(x) for x in data[i]],
            f"b{i % 2}",
        )
        for i in range(TRAIN + TEST)
    ]
    publish_features(spark, root / "features", spark.createDataFrame(rows, FEATURES_SCHEMA))
    curated = [
        (image_id(i), f"HAM_{i // 2:04d}", dx_of(i), DX_TYPES[i % 4], f"jpeg {i}".encode(), f"b{i % 2}")
        for i in range(TRAIN + TEST)
    ]
    frame = spark.createDataFrame(curated, ["image_id", "lesion_id", "dx", "dx_type", "image", "batch_id"])
    publish_curated(spark, root / "curated", frame)
    return root


@pytest.fixture
def small_blocks(spark, monkeypatch):
    monkeypatch.setattr(similar, "CHUNK_ROWS", BLOCK_ROWS)
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    spark.conf.set(key, ARROW_BATCH)
    yield
    spark.conf.set(key, before)


def queries() -> dict[str, list[float]]:
    data = vectors()
    rng = np.random.default_rng(2)
    return {
        "Q_same_as_train_7": [float(x) * 3.0 for x in data[7]],  # cosine 1.0 to ISIC_0007
        "Q_same_as_test_45": [float(x) for x in data[45]],  # a test row: never a neighbour
        "Q_random": rng.normal(size=DIM).tolist(),
        image_id(12): [float(x) for x in data[12]],  # a training image scored again: not its own neighbour
    }


def expected(query_ids: list[str]) -> dict[str, list[tuple[str, float]]]:
    """`nearest` over the training rows alone (less a query's own image)."""
    data, asked = vectors(), queries()
    out = {}
    for query in query_ids:
        train = [i for i in range(TRAIN) if image_id(i) != query]
        indices, sims = nearest(data[train], np.array([asked[query]]), K)
        out[query] = [(image_id(train[j]), s) for j, s in zip(indices[0], sims[0], strict=True)]
    return out


def test_similar_cases_are_the_nearest_training_images(spark, stored, small_blocks):
    found = similar_cases(spark, str(stored / "features"), str(stored / "curated"), queries(), K)

    assert list(found) == list(queries())
    for query, neighbours in expected(list(found)).items():
        got = found[query]
        assert [n["image_id"] for n in got] == [image_id for image_id, _ in neighbours]
        assert [n["similarity"] for n in got] == pytest.approx([s for _, s in neighbours], abs=1e-9)
        for n in got:
            i = int(n["image_id"].removeprefix("ISIC_"))
            assert i < TRAIN  # only training rows
            assert n == {
                "image_id": image_id(i),
                "lesion_id": f"HAM_{i // 2:04d}",
                "dx": dx_of(i),
                "dx_type": DX_TYPES[i % 4],
                "similarity": n["similarity"],
            }
    assert found["Q_same_as_train_7"][0]["image_id"] == image_id(7)
    assert found["Q_same_as_train_7"][0]["similarity"] == pytest.approx(1.0, abs=1e-9)
    assert found["Q_same_as_test_45"][0]["similarity"] < 0.999
    assert image_id(12) not in [n["image_id"] for n in found[image_id(12)]]


@pytest.mark.parametrize("curated", ["none", "unreadable"])
def test_without_curated_dx_type_is_none(spark, stored, tmp_path, curated):
    root = None
    if curated == "unreadable":
        (tmp_path / "summaries").mkdir()
        (tmp_path / "summaries" / "b1.json").write_text('{"not": "a manifest"}')
        root = str(tmp_path)
    found = similar_cases(spark, str(stored / "features"), root, {"Q": queries()["Q_random"]}, 3)
    assert [n["image_id"] for n in found["Q"]] == [i for i, _ in expected(["Q_random"])["Q_random"][:3]]
    assert all(n["dx_type"] is None for n in found["Q"])


def test_wrong_dimension_names_both(spark, stored):
    with pytest.raises(ValueError, match=rf"query vectors have {DIM + 1} features .* has {DIM}$"):
        similar_cases(spark, str(stored / "features"), None, {"Q": [1.0] * (DIM + 1)}, K)
    with pytest.raises(ValueError, match="differ in length"):
        similar_cases(spark, str(stored / "features"), None, {"Q": [1.0] * DIM, "R": [1.0]}, K)


def test_no_training_rows_gives_no_neighbours(spark, tmp_path):
    row = (image_id(1), "HAM_1", "nv", SPLIT_TEST, "mobilenet_0.25", "test", DIM, [1.0] * DIM, "b1")
    publish_features(spark, tmp_path / "features", spark.createDataFrame([row], FEATURES_SCHEMA))
    found = similar_cases(spark, str(tmp_path / "features"), None, {"Q": [1.0] * DIM, "R": [0.0] * DIM}, K)
    assert found == {"Q": [], "R": []}
    assert similar_cases(spark, str(tmp_path / "features"), None, {}, K) == {}


def test_neighbour_images_reads_only_the_named_rows(spark, stored):
    images = neighbour_images(spark, str(stored / "curated"), [image_id(3), image_id(44), "ISIC_none"])
    assert images == {image_id(3): b"jpeg 3", image_id(44): b"jpeg 44"}
    assert neighbour_images(spark, str(stored / "curated"), []) == {}


def test_topk_merges_blocks_like_one_block():
    """The partition-side accumulator: blocks merged one by one give the one-block answer, string keys."""
    rng = np.random.default_rng(3)
    sims = np.round(rng.random((3, 30)), 1)  # one decimal: many ties
    keys = np.array([f"id{j:02d}" for j in rng.permutation(30)])
    one = similar.TopK.start(3, 4, {"key": str}).merge(sims, {"key": keys})
    top = similar.TopK.start(3, 4, {"key": str})
    for start in range(0, 30, 7):
        top = top.merge(sims[:, start : start + 7], {"key": keys[start : start + 7]})
    assert (top.columns["key"] == one.columns["key"]).all()
    for row in range(3):
        ranked = sorted(zip(-sims[row], keys, strict=True))[:4]
        assert top.columns["key"][row].tolist() == [key for _, key in ranked]

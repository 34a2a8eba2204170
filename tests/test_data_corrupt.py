"""Corruptions: exact imbalance counts, noise rates within binomial bounds, flip targets, a clean disjoint meta
set, byte-identical outputs for the same inputs, clear errors.

Noise bounds: the number of wrong labels among n training labels is Binomial(n, q), q the expected share, so
the realised share has standard deviation sigma = sqrt(q (1 - q) / n); we accept |share - q| <= 5 sigma (a
false failure has probability < 1e-6). Labels-only tests use the real per-class sizes (5000 x 10, 500 x 100):
the protocol only looks at labels, so no images are needed for them.
"""

import hashlib
import json
import math

import numpy as np
import pytest

from mwnet.cli import main
from mwnet.config import FlipNoise, ImbalanceCorruption, UniformNoise, load_params
from mwnet.data.corrupt import (
    SPLIT_DTYPES,
    SPLIT_KEYS,
    build_split,
    corrupt_dataset,
    imbalance_counts,
    npz_bytes,
    split_npz_bytes,
    summary_json,
)
from mwnet.data.raw import DataError, read_raw
from mwnet.paths import SPLIT_FILE, SUMMARY_FILE, split_dir

from conftest import REPO, copy_params

CIFAR10_IMB100 = [4990, 2991, 1793, 1075, 644, 386, 231, 138, 83, 49]


def real_size_labels(num_classes: int, per_class: int) -> np.ndarray:
    """Labels in a fixed shuffled order, like the official training set."""
    return np.random.Generator(np.random.PCG64(123)).permutation(np.repeat(np.arange(num_classes), per_class))


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params")


def within_5_sigma(share: float, q: float, n: int) -> bool:
    return abs(share - q) <= 5 * math.sqrt(q * (1 - q) / n)


def check_meta(s, labels, num_classes, per_class):
    assert len(np.intersect1d(s.meta_idx, s.train_idx)) == 0
    assert len(np.unique(s.meta_idx)) == len(s.meta_idx) and len(np.unique(s.train_idx)) == len(s.train_idx)
    assert np.bincount(labels[s.meta_idx], minlength=num_classes).tolist() == [per_class] * num_classes
    assert np.array_equal(s.train_true, labels[s.train_idx])
    for a in (s.train_idx, s.train_label, s.train_true, s.meta_idx):
        assert a.dtype == np.int64


def test_imbalance_count_formula():
    assert imbalance_counts(4990, 10, 100) == CIFAR10_IMB100 and sum(CIFAR10_IMB100) == 12380
    c = imbalance_counts(490, 100, 100)
    assert sum(c) == 10626 and c[0] == 490 and c[-1] == 4 and c == sorted(c, reverse=True)
    assert imbalance_counts(100, 10, 1) == [100] * 10


@pytest.mark.parametrize("dataset,C,per_class,total,largest,smallest", [
    ("cifar10", 10, 5000, 12380, 4990, 49), ("cifar100", 100, 500, 10626, 490, 4)])
def test_imbalance_100_at_full_size(params, dataset, C, per_class, total, largest, smallest):
    labels = real_size_labels(C, per_class)
    s = build_split(labels, C, params.corruptions["imbalance_100"], seed=1)
    counts = np.bincount(s.train_true, minlength=C).tolist()
    assert sum(counts) == total and counts[0] == largest and counts[-1] == smallest
    assert counts == imbalance_counts((len(labels) - 10 * C) / C, C, 100)
    if dataset == "cifar10":
        assert counts == CIFAR10_IMB100
    assert np.array_equal(s.train_label, s.train_true)  # imbalance changes no label
    check_meta(s, labels, C, 10)


@pytest.mark.parametrize("C,per_class,q", [(10, 5000, 0.36), (100, 500, 0.396)])
@pytest.mark.parametrize("seed", [1, 2])
def test_uniform_40_share_of_wrong_labels(params, C, per_class, q, seed):
    corr = params.corruptions["uniform_40"]
    labels = real_size_labels(C, per_class)
    s = build_split(labels, C, corr, seed)
    assert len(s.train_idx) == 49000
    check_meta(s, labels, C, corr.meta_count_per_class(C))
    wrong = s.train_label != s.train_true
    assert within_5_sigma(wrong.mean(), q, len(wrong)), wrong.mean()
    # wrong labels spread over all other classes (uniform draw), none outside 0..C-1
    assert s.train_label.min() >= 0 and s.train_label.max() < C
    pairs = np.unique(s.train_true[wrong] * C + s.train_label[wrong])
    assert len(pairs) > 0.95 * C * (C - 1) or C == 100  # CIFAR-10: every off-diagonal pair occurs


@pytest.mark.parametrize("C,per_class", [(10, 5000), (100, 500)])
def test_flip_40_two_targets(params, C, per_class):
    corr = params.corruptions["flip_40"]
    assert corr.targets == 2
    labels = real_size_labels(C, per_class)
    s = build_split(labels, C, corr, seed=1)
    check_meta(s, labels, C, corr.meta_count_per_class(C))
    assert len(s.flip_targets) == C
    for c, (t1, t2) in enumerate(s.flip_targets):
        assert len({c, t1, t2}) == 3 and 0 <= t1 < C and 0 <= t2 < C
        used = s.train_label[s.train_true == c]
        assert set(np.unique(used).tolist()) <= {c, t1, t2}
        n = len(used)
        for t in (t1, t2):
            assert within_5_sigma((used == t).mean(), 0.2, n), (c, t, (used == t).mean())
    wrong = (s.train_label != s.train_true).mean()
    assert within_5_sigma(wrong, 0.4, len(s.train_idx))


def test_degenerate_parameters_are_refused_not_built_empty():
    labels = real_size_labels(10, 50)
    too_many_meta = UniformNoise(kind="uniform", rate=0.4, meta_total=500, recipe="x")  # every image of a class
    with pytest.raises(DataError, match=r"classes \[0, 1, .*\] have no training images left .* 50 meta"):
        build_split(labels, 10, too_many_meta, seed=1)
    huge_factor = ImbalanceCorruption(kind="imbalance", factor=1e4, meta_per_class=1, recipe="x")
    with pytest.raises(DataError, match=r"imbalance factor 10000: class 4 would keep 0 training images"):
        build_split(labels, 10, huge_factor, seed=1)


def test_flip_targets_are_fixed_across_run_seeds(params):
    """docs/protocol.md: the targets are drawn once with a fixed seed, so every run seed shares one transition; the
    run seed changes which labels move. A new target_seed changes the targets."""
    corr = params.corruptions["flip_40"]
    labels = real_size_labels(10, 5000)
    a, b = build_split(labels, 10, corr, seed=1), build_split(labels, 10, corr, seed=2)
    assert a.flip_targets == b.flip_targets
    assert not np.array_equal(a.train_label, b.train_label)
    other = build_split(labels, 10, corr.model_copy(update={"target_seed": corr.target_seed + 1}), seed=1)
    assert other.flip_targets != a.flip_targets


def test_flip_single_target_variant():
    corr = FlipNoise(kind="flip", rate=0.4, targets=1, target_seed=1, meta_total=1000, recipe="flip")
    labels = real_size_labels(10, 5000)
    s = build_split(labels, 10, corr, seed=3)
    for c, (t,) in enumerate(s.flip_targets):
        used = s.train_label[s.train_true == c]
        assert t != c and set(np.unique(used).tolist()) <= {c, t}
        assert within_5_sigma((used == t).mean(), 0.4, len(used))


def test_same_seed_same_split_other_seed_other_split(params):
    labels = real_size_labels(10, 5000)
    for name in ("imbalance_100", "uniform_40", "flip_40"):
        a, b = (build_split(labels, 10, params.corruptions[name], seed=7) for _ in range(2))
        c = build_split(labels, 10, params.corruptions[name], seed=8)
        blob = [split_npz_bytes(x) for x in (a, b, c)]
        assert blob[0] == blob[1] and blob[0] != blob[2]


def test_npz_is_readable_and_pinned(tmp_path):
    """The bytes depend only on the arrays (fixed zip metadata, no deflate) and the random streams only on
    the seed (numpy PCG64 is stable across versions): pinned so a change anywhere shows up here."""
    arrays = {"b": np.arange(5, dtype=np.int64), "a": np.array([3, -1], dtype=np.int64)}
    (tmp_path / "x.npz").write_bytes(npz_bytes(arrays))
    with np.load(tmp_path / "x.npz") as z:
        assert sorted(z.files) == ["a", "b"] and all(np.array_equal(z[k], v) for k, v in arrays.items())
    assert hashlib.md5(npz_bytes({"a": np.arange(3, dtype=np.int64)})).hexdigest() == \
        "b64dbe962ed1575272b2ad9395dab4a6"
    labels = np.tile(np.arange(10), 200)
    pinned = {
        UniformNoise(kind="uniform", rate=0.4, meta_total=100, recipe="x"): "1123c34dfe68e315471f0aa3cc580c77",
        FlipNoise(kind="flip", rate=0.4, targets=2, target_seed=1, meta_total=100, recipe="x"): "8d113d597890b0105a28da01587f8476",
        ImbalanceCorruption(kind="imbalance", factor=10, meta_per_class=10, recipe="x"):
            "c22e77c81a59550dd7c5568132c31cb8",
    }
    for corr, md5 in pinned.items():
        s = build_split(labels, 10, corr, seed=1)
        assert hashlib.md5(split_npz_bytes(s)).hexdigest() == md5, corr.kind


def test_summary_json_round_trips():
    d = {"m": [[1, 2], [3, 4]], "f": [0.5, -2e-05], "s": "x [1, 2]", "e": [], "n": None}
    assert json.loads(summary_json(d)) == d and '[1, 2],\n' in summary_json(d)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("name", ["imbalance_100", "uniform_40", "flip_40"])
def test_end_to_end_on_fake_data_is_byte_identical(tmp_path, fake_raw_root, dataset, name):
    runs = []
    for i, seed in enumerate((4, 4, 5)):
        p = load_params(copy_params(tmp_path / f"p{i}", fake_raw_root, tmp_path / f"out{i}"))
        out, summary = corrupt_dataset(p, dataset, name, seed)
        assert out == split_dir(tmp_path / f"out{i}", dataset, name, seed)
        assert sorted(x.name for x in out.iterdir()) == [SPLIT_FILE, SUMMARY_FILE]
        assert sorted(x.name for x in out.parent.iterdir()) == [f"seed{seed}"]  # no staging left over
        runs.append(((out / SPLIT_FILE).read_bytes(), (out / SUMMARY_FILE).read_bytes(), summary))
    assert runs[0][:2] == runs[1][:2]  # same raw data, params, seed: same bytes (other folder, other time)
    assert runs[0][0] != runs[2][0] and runs[0][1] != runs[2][1]

    blob, text, s = runs[0]
    assert json.loads(text) == s
    raw = read_raw(fake_raw_root, dataset)
    C = raw.num_classes
    corr = p.corruptions[name]
    with np.load(tmp_path / "out0" / dataset / name / "seed4" / SPLIT_FILE) as z:
        assert sorted(z.files) == sorted(SPLIT_KEYS) and all(z[k].dtype == SPLIT_DTYPES[k] for k in SPLIT_KEYS)
        train_true, train_label, meta_idx = z["train_true"], z["train_label"], z["meta_idx"]
        assert np.array_equal(train_true, raw.train_y[z["train_idx"]])
        assert len(np.intersect1d(meta_idx, z["train_idx"])) == 0
    assert s["split_md5"] == hashlib.md5(blob).hexdigest()
    assert (s["dataset"], s["corruption"], s["seed"], s["num_classes"]) == (dataset, name, 4, C)
    assert s["corruption_params"] == corr.model_dump(mode="json")
    assert s["raw_verified"] is False  # fake data: no fetch record
    assert len(s["raw_md5"]) == 32
    m = corr.meta_count_per_class(C)
    assert s["meta_counts"] == [m] * C and s["n_meta"] == m * C
    assert s["train_counts"] == np.bincount(train_true, minlength=C).tolist()
    assert s["train_label_counts"] == np.bincount(train_label, minlength=C).tolist()
    T = np.array(s["transition_matrix"])
    assert T.shape == (C, C) and T.sum() == s["n_train"] and T.sum(1).tolist() == s["train_counts"]
    assert s["wrong_label_share"] == pytest.approx(1 - np.trace(T) / T.sum())
    if name == "imbalance_100":
        n_max = (len(raw.train_y) - m * C) / C
        assert s["train_counts"] == imbalance_counts(n_max, C, 100) and s["wrong_label_share"] == 0
        assert min(s["train_counts"]) >= 1
    if name == "flip_40":
        for c, ts in enumerate(s["flip_targets"]):
            assert set(np.flatnonzero(T[c]).tolist()) <= {c, *ts}


def test_unknown_corruption_lists_known_ones(fake_params_dir, capsys):
    with pytest.raises(DataError, match=r"unknown corruption 'nope'.*flip_40.*imbalance_100.*uniform_40"):
        corrupt_dataset(load_params(fake_params_dir), "cifar10", "nope", 1)
    assert main(["data", "corrupt", "--dataset", "cifar10", "--corruption", "nope", "--seed", "1",
                 "--params", str(fake_params_dir)]) == 2
    err = capsys.readouterr().err
    assert "mwnet: error: unknown corruption 'nope'" in err and "uniform_40" in err


def test_cli_corrupt(tmp_path, fake_raw_root, capsys):
    params = copy_params(tmp_path / "params", fake_raw_root, tmp_path / "corrupted")
    assert main(["data", "corrupt", "--dataset", "cifar10", "--corruption", "uniform_40", "--seed", "3",
                 "--params", str(params)]) == 0
    out = capsys.readouterr().out
    assert "200 training + 1000 meta images" in out and "raw_verified=False" in out
    assert (tmp_path / "corrupted" / "cifar10" / "uniform_40" / "seed3" / SPLIT_FILE).is_file()


def test_missing_raw_data_says_how_to_fetch(tmp_path, capsys):
    params = copy_params(tmp_path / "params", tmp_path / "no_raw", tmp_path / "corrupted")
    assert main(["data", "corrupt", "--dataset", "cifar100", "--corruption", "flip_40", "--seed", "1",
                 "--params", str(params)]) == 2
    assert "mwnet data fetch --dataset cifar100" in capsys.readouterr().err
    assert not (tmp_path / "corrupted").exists()


def test_too_few_images_for_meta():
    labels = np.repeat(np.arange(10), 50)
    with pytest.raises(DataError, match="class 0 has 50 training images, fewer than the 100 meta"):
        build_split(labels, 10, UniformNoise(kind="uniform", rate=0.4, meta_total=1000, recipe="x"), 1)


def test_cli_corrupt_applies_profile_overlay(tmp_path, fake_raw_root):
    params = copy_params(tmp_path / "params", fake_raw_root, tmp_path / "corrupted")
    (params / "profiles" / "small.yaml").write_text("corruptions: {uniform_40: {meta_total: 100}}\n")
    assert main(["data", "corrupt", "--dataset", "cifar10", "--corruption", "uniform_40", "--seed", "1",
                 "--params", str(params), "--profile", "small"]) == 0
    s = json.loads((tmp_path / "corrupted" / "cifar10" / "uniform_40" / "seed1" / SUMMARY_FILE).read_text())
    assert s["meta_counts"] == [10] * 10 and s["n_train"] == 1100

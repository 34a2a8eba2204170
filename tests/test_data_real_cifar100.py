"""The real CIFAR-100 copy (../shared/data/cifar100, exported once per test run to the official files):
verified by the official md5 sums, the protocol's numbers on it. Skipped when the copy is absent."""

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mwnet.config import load_params
from mwnet.data.corrupt import corrupt_dataset
from mwnet.data.loading import load_split
from mwnet.data.raw import RECORD_FILE, fetch, raw_spec, read_raw

from conftest import copy_params

SHARED_CIFAR100 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar100"
OFFICIAL_MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
                "meta": "7973b15100ade9c7d40fb424638fde48"}

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not (SHARED_CIFAR100 / "export.py").is_file(),
                       reason=f"real CIFAR-100 copy not found at {SHARED_CIFAR100} (CI lays it out as ../shared)"),
]


@pytest.fixture(scope="session")
def real100(tmp_path_factory):
    """export.py's folder (byte for byte the official files), fetched into a raw root, + params."""
    out = tmp_path_factory.mktemp("cifar100_export")
    subprocess.run([sys.executable, str(SHARED_CIFAR100 / "export.py"), str(out)], check=True, capture_output=True)
    base = tmp_path_factory.mktemp("real100")
    rec = fetch("cifar100", base / "raw", str(out), allow_unverified=False)
    return base, out, rec, load_params(copy_params(base / "params", base / "raw", base / "corrupted"))


def sigma5(q, n):
    return 5 * math.sqrt(q * (1 - q) / n)


def test_official_md5s_verify_without_allow_unverified(real100):
    base, _, rec, _ = real100
    assert rec["raw_verified"] is True and rec["method"] == "official_md5" and rec["problems"] == []
    assert rec["files_md5"] == OFFICIAL_MD5
    assert dict(raw_spec("cifar100").all_files) == OFFICIAL_MD5  # torchvision's list is the official one
    assert json.loads((base / "raw" / "cifar-100-python" / RECORD_FILE).read_text())["raw_verified"] is True


def test_class_counts_and_fine_to_coarse(real100):
    base, out, _, _ = real100
    r = read_raw(base / "raw", "cifar100")
    assert r.train_x.shape == (50000, 3, 32, 32) and r.test_x.shape == (10000, 3, 32, 32)
    assert np.bincount(r.train_y).tolist() == [500] * 100 and np.bincount(r.test_y).tolist() == [100] * 100
    assert len(r.label_names) == 100 and r.label_names[:3] == ["apple", "aquarium_fish", "baby"]
    for name in ("train", "test"):
        d = pickle.loads((out / "cifar-100-python" / name).read_bytes(), encoding="latin1")
        fine, coarse = np.array(d["fine_labels"]), np.array(d["coarse_labels"])
        pairs = set(zip(fine.tolist(), coarse.tolist()))
        assert len(pairs) == 100, "each fine class belongs to exactly one coarse class"
        assert sorted(np.bincount([c for _, c in pairs]).tolist()) == [5] * 20


def test_protocol_numbers_on_real_cifar100(real100):
    base, _, _, params = real100
    _, s = corrupt_dataset(params, "cifar100", "imbalance_100", 1)
    assert s["n_train"] == 10626 and s["raw_verified"] is True
    assert s["train_counts"][0] == 490 and s["train_counts"][-1] == 4 and s["meta_counts"] == [10] * 100
    assert s["train_counts"] == sorted(s["train_counts"], reverse=True)

    _, s = corrupt_dataset(params, "cifar100", "uniform_40", 1)
    assert s["n_train"] == 49000 and s["meta_counts"] == [10] * 100
    # a redrawn label may land on the true class: expected wrong share 0.4 * 99/100 = 39.6%
    assert s["wrong_label_share_expected"] == pytest.approx(0.396)
    assert abs(s["wrong_label_share"] - 0.396) <= sigma5(0.396, 49000)

    _, s = corrupt_dataset(params, "cifar100", "flip_40", 1)
    T = np.array(s["transition_matrix"])
    for c, targets in enumerate(s["flip_targets"]):
        assert len(set(targets)) == 2 and c not in targets
        assert set(np.flatnonzero(T[c]).tolist()) == {c, *targets}, "each class goes to exactly two others"
    assert abs(s["wrong_label_share"] - 0.4) <= sigma5(0.4, s["n_train"])

    d = load_split("cifar100", "flip_40", 1, raw_root=base / "raw", corrupted_root=base / "corrupted")
    split = np.load(base / "corrupted" / "cifar100" / "flip_40" / "seed1" / "split.npz")
    assert not set(split["train_idx"].tolist()) & set(split["meta_idx"].tolist()), "meta set disjoint"
    raw = read_raw(base / "raw", "cifar100")
    assert (d.meta_y.numpy() == raw.train_y[split["meta_idx"]]).all(), "meta labels are the clean ones"
    assert np.bincount(d.meta_y.numpy(), minlength=100).tolist() == [10] * 100

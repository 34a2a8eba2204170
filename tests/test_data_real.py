"""The real CIFAR-10 copy (../shared/data/cifar10, exported to the official layout once per test run): content
verification, the protocol's numbers, and load time. Skipped when the copy is absent."""

import hashlib
import json
import math
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mwnet.config import load_params
from mwnet.data.corrupt import corrupt_dataset
from mwnet.data.loading import load_split
from mwnet.data.raw import KNOWN_CONTENT, RECORD_FILE, DataError, content_sha256, fetch, read_raw

from conftest import copy_params

SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
REAL_CONTENT_MD5 = "3d7df60196cbb162eae0001b44824de8"  # raw.content_md5 of the real CIFAR-10

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not (SHARED_CIFAR10 / "export.py").is_file(),
                       reason=f"real CIFAR-10 copy not found at {SHARED_CIFAR10} (CI lays it out as ../shared)"),
]


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Path:
    """export.py's content-verified folder (placeholder filenames: md5 differs from the official files)."""
    out = tmp_path_factory.mktemp("cifar10_export")
    subprocess.run([sys.executable, str(SHARED_CIFAR10 / "export.py"), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="session")
def real(tmp_path_factory, exported):
    """Fetched into a raw root (content-verified) + params pointing at it."""
    base = tmp_path_factory.mktemp("real")
    rec = fetch("cifar10", base / "raw", str(exported), allow_unverified=False)
    return base, rec, load_params(copy_params(base / "params", base / "raw", base / "corrupted"))


def test_known_sums_are_the_manifests():
    manifest = json.loads((SHARED_CIFAR10 / "MANIFEST.json").read_text())["content_sha256"]
    assert list(manifest.values()) == list(KNOWN_CONTENT["cifar10"]["split"].values())


def test_fetch_verifies_content(real):
    base, rec, _ = real
    assert rec["raw_verified"] is True and rec["method"] == "content_sha256" and rec["problems"] == []
    assert rec["content_md5"] == REAL_CONTENT_MD5
    r = read_raw(base / "raw", "cifar10")
    assert r.train_x.shape == (50000, 3, 32, 32) and r.test_x.shape == (10000, 3, 32, 32)
    assert np.bincount(r.train_y).tolist() == [5000] * 10 and np.bincount(r.test_y).tolist() == [1000] * 10
    # the per-file sums in the code agree with MANIFEST's whole-split sums
    assert content_sha256(r.train_x, r.train_y) == (KNOWN_CONTENT["cifar10"]["split"]["x_train"],
                                                     KNOWN_CONTENT["cifar10"]["split"]["y_train"])
    assert json.loads((base / "raw" / "cifar-10-batches-py" / RECORD_FILE).read_text())["raw_verified"] is True


def test_changed_label_is_refused(tmp_path, exported):
    src = tmp_path / "src"
    shutil.copytree(exported, src)
    f = src / "cifar-10-batches-py" / "data_batch_5"
    d = pickle.loads(f.read_bytes())
    d["labels"][17] = (d["labels"][17] + 1) % 10
    f.write_bytes(pickle.dumps(d, protocol=4))
    with pytest.raises(DataError) as e:
        fetch("cifar10", tmp_path / "raw", str(src), allow_unverified=False)
    msg = str(e.value)
    assert "data_batch_5" in msg and KNOWN_CONTENT["cifar10"]["files"]["data_batch_5"][1] in msg
    assert "data_batch_1" not in msg and "Fix" in msg
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []


def test_changed_label_names_are_refused(tmp_path, exported):
    src = tmp_path / "src"
    shutil.copytree(exported, src)
    f = src / "cifar-10-batches-py" / "batches.meta"
    d = pickle.loads(f.read_bytes())
    d["label_names"][3] = "dog"  # was "cat": images and labels untouched
    f.write_bytes(pickle.dumps(d, protocol=4))
    with pytest.raises(DataError) as e:
        fetch("cifar10", tmp_path / "raw", str(src), allow_unverified=False)
    assert "batches.meta" in str(e.value) and "'cat'" in str(e.value) and "'bird', 'dog', 'deer'" in str(e.value)
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []


def sigma5(q, n):
    return 5 * math.sqrt(q * (1 - q) / n)


def test_protocol_numbers_on_real_cifar10(real):
    _, _, params = real
    _, s = corrupt_dataset(params, "cifar10", "imbalance_100", 1)
    assert s["train_counts"] == [4990, 2991, 1793, 1075, 644, 386, 231, 138, 83, 49] and s["n_train"] == 12380
    assert s["meta_counts"] == [10] * 10 and s["raw_verified"] is True and s["raw_md5"] == REAL_CONTENT_MD5
    _, s = corrupt_dataset(params, "cifar10", "uniform_40", 1)
    assert s["n_train"] == 49000 and s["meta_counts"] == [100] * 10
    assert abs(s["wrong_label_share"] - 0.36) <= sigma5(0.36, 49000)
    _, s = corrupt_dataset(params, "cifar10", "flip_40", 1)
    T = np.array(s["transition_matrix"])
    for c, (t1, t2) in enumerate(s["flip_targets"]):
        assert set(np.flatnonzero(T[c]).tolist()) <= {c, t1, t2}
        for t in (t1, t2):
            assert abs(T[c, t] / T[c].sum() - 0.2) <= sigma5(0.2, T[c].sum())


def test_load_split_is_fast(real):
    base, _, params = real
    corrupt_dataset(params, "cifar10", "uniform_40", 2)
    t0 = time.perf_counter()
    d = load_split("cifar10", "uniform_40", 2, raw_root=base / "raw", corrupted_root=base / "corrupted")
    took = time.perf_counter() - t0
    print(f"load_split cifar10 uniform_40 (49,000 + 1,000 + 10,000 images): {took:.2f} s")
    assert d.train_x.shape == (49000, 3, 32, 32) and d.meta_x.shape == (1000, 3, 32, 32)
    assert d.raw_verified is True and d.split_md5 == hashlib.md5(
        (base / "corrupted" / "cifar10" / "uniform_40" / "seed2" / "split.npz").read_bytes()).hexdigest()
    assert took < 10, f"load_split took {took:.1f} s"
    npz = base / "corrupted" / "cifar10" / "uniform_40" / "seed2" / "split.npz"
    assert npz.stat().st_size < 400_000, "a split is indices and labels only: a few hundred KB at most"

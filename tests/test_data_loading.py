"""load_split: uint8 NCHW images and int64 labels for training part, meta set and test set, tied to raw data."""

import hashlib
import pickle
import shutil

import numpy as np
import pytest
import torch

from mwnet.data.loading import SplitData, load_split
from mwnet.data.raw import DataError, read_raw
from mwnet.paths import SPLIT_FILE, SUMMARY_FILE, split_dir


@pytest.mark.parametrize("dataset,corruption", [("cifar10", "uniform_40"), ("cifar100", "imbalance_100")])
def test_load_split_matches_raw_and_split(fake_raw_root, fake_split, dataset, corruption):
    root = fake_split(dataset, corruption, 1)
    d = load_split(dataset, corruption, 1, raw_root=fake_raw_root, corrupted_root=root)
    assert isinstance(d, SplitData)
    raw = read_raw(fake_raw_root, dataset)
    npz = split_dir(root, dataset, corruption, 1) / SPLIT_FILE
    with np.load(npz) as z:
        s = {k: z[k] for k in z.files}
    for x in (d.train_x, d.meta_x, d.test_x):
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32) and x.is_contiguous()
    for y in (d.train_y, d.train_true, d.meta_y, d.test_y):
        assert y.dtype == torch.int64
    assert torch.equal(d.train_x, torch.from_numpy(raw.train_x[s["train_idx"]]))
    assert torch.equal(d.train_y, torch.from_numpy(s["train_label"]))
    assert torch.equal(d.train_true, torch.from_numpy(raw.train_y[s["train_idx"]]))
    assert torch.equal(d.meta_x, torch.from_numpy(raw.train_x[s["meta_idx"]]))
    assert torch.equal(d.meta_y, torch.from_numpy(raw.train_y[s["meta_idx"]]))  # meta labels clean
    assert torch.equal(d.test_x, torch.from_numpy(raw.test_x)) and len(d.test_y) == len(raw.test_y)
    assert d.num_classes == raw.num_classes and d.raw_verified is False
    assert d.split_md5 == hashlib.md5(npz.read_bytes()).hexdigest()
    if corruption == "uniform_40":
        assert (d.train_y != d.train_true).any()


def test_missing_split_says_how_to_build(tmp_path, fake_raw_root):
    with pytest.raises(DataError, match="mwnet data corrupt --dataset cifar10 --corruption flip_40 --seed 9"):
        load_split("cifar10", "flip_40", 9, raw_root=fake_raw_root, corrupted_root=tmp_path)


def test_split_refuses_other_raw_data(tmp_path, fake_raw_root, fake_split):
    root = fake_split("cifar10", "flip_40", 1)
    other = tmp_path / "raw"
    shutil.copytree(fake_raw_root / "cifar-10-batches-py", other / "cifar-10-batches-py")
    f = other / "cifar-10-batches-py" / "test_batch"
    d = pickle.loads(f.read_bytes())
    d["data"][0, 0] ^= 1
    f.write_bytes(pickle.dumps(d))
    with pytest.raises(DataError, match="built from raw data with md5 .* Fix: rebuild"):
        load_split("cifar10", "flip_40", 1, raw_root=other, corrupted_root=root)


def _copy_split(tmp_path, fake_split, corruption="flip_40"):
    root = fake_split("cifar10", corruption, 1)
    dst = tmp_path / "corrupted"
    shutil.copytree(split_dir(root, "cifar10", corruption, 1), split_dir(dst, "cifar10", corruption, 1))
    return dst, split_dir(dst, "cifar10", corruption, 1)


def test_damaged_split_file_is_refused(tmp_path, fake_raw_root, fake_split):
    root, folder = _copy_split(tmp_path, fake_split)
    blob = bytearray((folder / SPLIT_FILE).read_bytes())
    blob[-200] ^= 1  # one flipped bit inside the arrays
    (folder / SPLIT_FILE).write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"split.npz: md5 .* summary.json beside it records .* Fix: rebuild"):
        load_split("cifar10", "flip_40", 1, raw_root=fake_raw_root, corrupted_root=root)


def test_unreadable_summary_names_the_file(tmp_path, fake_raw_root, fake_split):
    root, folder = _copy_split(tmp_path, fake_split)
    (folder / SUMMARY_FILE).write_text('{"split_md5": "0"')  # truncated
    with pytest.raises(DataError, match=r"summary.json: unreadable \(JSONDecodeError.*Fix: rebuild"):
        load_split("cifar10", "flip_40", 1, raw_root=fake_raw_root, corrupted_root=root)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_to_cuda(fake_raw_root, fake_split):
    root = fake_split("cifar10", "flip_40", 1)
    d = load_split("cifar10", "flip_40", 1, raw_root=fake_raw_root, corrupted_root=root, device="cuda")
    assert d.train_x.is_cuda and d.test_y.is_cuda and d.train_x.dtype == torch.uint8

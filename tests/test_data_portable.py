"""Portable splits: `mwnet data pack` / `unpack` move one split with its images; the run sees the same data."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, copy_params
from mwnet.config import load_params
from mwnet.data.loading import load_split
from mwnet.data import portable
from mwnet.data.portable import IMAGES_FILE, PACK_FILE, _from_mosaic, _to_mosaic, pack_split, unpack_split
from mwnet.data.raw import DataError
from mwnet.paths import split_dir


def _mwnet(*args, cwd=REPO):
    code = "import sys; from mwnet.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture
def elsewhere(tmp_path):
    """params of a machine that has no raw data at all (an empty raw_root)."""
    return copy_params(tmp_path / "params", tmp_path / "no_raw", tmp_path / "corrupted")


def test_mosaic_round_trip_keeps_every_pixel_and_order():
    x = np.random.default_rng(0).integers(0, 256, (257, 3, 32, 32), dtype=np.uint8)
    m = _to_mosaic(x)
    assert m.shape == (3 * 32, 3200, 3)
    assert np.array_equal(_from_mosaic(m, 257), x)


@pytest.mark.parametrize("dataset,corruption", [("cifar10", "imbalance_100"), ("cifar100", "flip_40")])
def test_pack_unpack_gives_the_same_split_without_raw_data(tmp_path, fake_params_dir, fake_split, fake_raw_root,
                                                           elsewhere, dataset, corruption, monkeypatch):
    root = fake_split(dataset, corruption)
    original = load_split(dataset, corruption, 1, raw_root=fake_raw_root, corrupted_root=root)
    # real splits span several 10,000-image mosaics; here 250-image ones do, with a partial last one
    monkeypatch.setattr(portable, "PER_MOSAIC", 250)
    info = pack_split(load_params(fake_params_dir), dataset, corruption, 1, tmp_path / "pack")
    assert info["counts"] == {"train_x": len(original.train_y), "meta_x": len(original.meta_y),
                              "test_x": len(original.test_y)}
    assert len(info["mosaics"]["train_x"]) == -(-len(original.train_y) // 250) > 1
    dest = unpack_split(load_params(elsewhere), tmp_path / "pack")
    assert dest == split_dir(tmp_path / "corrupted", dataset, corruption, 1)
    assert not (tmp_path / "no_raw").exists()
    moved = load_split(dataset, corruption, 1, raw_root=tmp_path / "no_raw", corrupted_root=tmp_path / "corrupted")
    for k, a in vars(original).items():
        b = getattr(moved, k)
        if torch.is_tensor(a):
            assert a.dtype == b.dtype and torch.equal(a, b), k
        else:
            assert a == b, k


def test_a_damaged_pack_is_refused_and_installs_nothing(tmp_path, fake_params_dir, fake_split, elsewhere):
    fake_split("cifar10", "uniform_40")
    pack = tmp_path / "pack"
    pack_split(load_params(fake_params_dir), "cifar10", "uniform_40", 1, pack)
    info = json.loads((pack / PACK_FILE).read_text())
    from PIL import Image

    name = info["mosaics"]["train_x"][0]["file"]
    img = np.asarray(Image.open(pack / name).convert("RGB")).copy()
    img[5, 7, 0] ^= 1  # one channel of one pixel
    Image.fromarray(img).save(pack / name, "WEBP", lossless=True)
    with pytest.raises(DataError, match=rf"train_x \({name}\) does not match its SHA-256"):
        unpack_split(load_params(elsewhere), pack)
    assert not (tmp_path / "corrupted").exists() or not any((tmp_path / "corrupted").rglob("*.npz"))


def test_installed_images_are_checked_at_every_load(tmp_path, fake_params_dir, fake_split, elsewhere):
    fake_split("cifar10", "flip_40")
    pack_split(load_params(fake_params_dir), "cifar10", "flip_40", 1, tmp_path / "pack")
    dest = unpack_split(load_params(elsewhere), tmp_path / "pack")
    with np.load(dest / IMAGES_FILE) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["test_y"][0] = (arrays["test_y"][0] + 1) % 10
    np.savez(dest / IMAGES_FILE, **arrays)
    with pytest.raises(DataError, match="images.npz: md5 differs from packed.json"):
        load_split("cifar10", "flip_40", 1, raw_root=tmp_path / "no_raw", corrupted_root=tmp_path / "corrupted")


def test_unpack_never_replaces_another_split(tmp_path, fake_params_dir, fake_split):
    fake_split("cifar10", "imbalance_100", seed=1)
    fake_split("cifar10", "imbalance_100", seed=2)
    params = load_params(fake_params_dir)
    pack_split(params, "cifar10", "imbalance_100", 2, tmp_path / "pack")
    info = json.loads((tmp_path / "pack" / PACK_FILE).read_text())
    info["seed"] = 1  # a pack claiming to be seed 1's split, but holding seed 2's
    (tmp_path / "pack" / PACK_FILE).write_text(json.dumps(info))
    before = (split_dir(params.data.corrupted_root, "cifar10", "imbalance_100", 1) / "split.npz").read_bytes()
    with pytest.raises(DataError, match="holds another split"):
        unpack_split(params, tmp_path / "pack")
    assert (split_dir(params.data.corrupted_root, "cifar10", "imbalance_100", 1) / "split.npz").read_bytes() == before


def test_cli_pack_then_train_where_there_is_no_raw_data(tmp_path, fake_params_dir, fake_split, elsewhere):
    fake_split("cifar10", "imbalance_100")
    r = _mwnet("data", "pack", "--dataset", "cifar10", "--corruption", "imbalance_100", "--seed", "1",
               "--out", str(tmp_path / "pack"), "--params", str(fake_params_dir))
    assert r.returncode == 0, r.stderr
    assert "MiB" in r.stdout and "mwnet data unpack" in r.stdout
    r = _mwnet("data", "unpack", str(tmp_path / "pack"), "--params", str(elsewhere))
    assert r.returncode == 0, r.stderr
    r = _mwnet("train", "--dataset", "cifar10", "--corruption", "imbalance_100", "--arch", "1-10-1", "--seed", "1",
               "--profile", "quick", "--params", str(elsewhere), "--no-tracking", "--device", "cpu",
               "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    summary = json.loads((tmp_path / "pack" / "summary.json").read_text())
    assert metrics["split_md5"] == summary["split_md5"]
    r = _mwnet("data", "unpack", str(tmp_path / "nowhere"), "--params", str(elsewhere))
    assert r.returncode != 0 and "not a readable mwnet pack" in r.stderr and "Traceback" not in r.stderr

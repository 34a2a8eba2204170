"""A split that travels without its raw data: the images one run needs, lossless, content-checked.

A GPU machine reached through a small upload (or a cluster node without the raw CIFAR) needs only the images
a split uses. `mwnet data pack` writes a folder with the split's own files (split.npz, summary.json),
its images (training part in split order, meta set, test set) as lossless WebP mosaics of at most 10,000
images, their labels, and pack.json with the SHA-256 of every decoded array. `mwnet data unpack` checks
every sum, then installs the split under data.corrupted_root with images.npz beside split.npz;
load_split takes the images from there (checked against packed.json's md5) instead of the raw data.
The loaded tensors, split_md5, raw_md5 and raw_verified are those of the original, so a run on a
packed split is the same run. CIFAR-10 imbalance 100 packs to 36 MiB (the raw data: 176 MiB of pixels).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np

from mwnet.data.raw import DataError
from mwnet.io import atomic_dir
from mwnet.paths import SPLIT_FILE, SUMMARY_FILE, split_dir

PACK_FORMAT = 1
PACK_FILE = "pack.json"
IMAGES_FILE = "images.npz"  # installed beside split.npz: the split's images, no raw data needed
PACKED_FILE = "packed.json"  # pack.json + the md5 of images.npz
IMAGE_ARRAYS = ("train_x", "meta_x", "test_x")  # uint8 (N, 3, 32, 32)
LABEL_ARRAYS = ("train_y", "train_true", "meta_y", "test_y")
PER_MOSAIC, ACROSS = 10_000, 100  # WebP sides stay below its 16,383 px limit


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _to_mosaic(x: np.ndarray) -> np.ndarray:
    """(n, 3, 32, 32) -> one (rows*32, 3200, 3) image, zero-padded to whole rows."""
    rows = -(-len(x) // ACROSS)
    pad = np.zeros((rows * ACROSS, 3, 32, 32), np.uint8)
    pad[: len(x)] = x
    return pad.transpose(0, 2, 3, 1).reshape(rows, ACROSS, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(
        rows * 32, ACROSS * 32, 3)


def _from_mosaic(m: np.ndarray, n: int) -> np.ndarray:
    rows = m.shape[0] // 32
    x = m.reshape(rows, 32, ACROSS, 32, 3).transpose(0, 2, 1, 3, 4).reshape(rows * ACROSS, 32, 32, 3)
    return np.ascontiguousarray(x[:n].transpose(0, 3, 1, 2))


def pack_split(params, dataset: str, corruption: str, seed: int, out: str | Path) -> dict:
    """Write the portable copy of an existing split to `out` (replaced whole; nothing half-written)."""
    from PIL import Image

    from mwnet.data.loading import load_split

    d = load_split(dataset, corruption, seed, raw_root=params.data.raw_root,
                   corrupted_root=params.data.corrupted_root)  # checks split and raw data first
    arrays = {k: getattr(d, k).numpy().astype(np.uint8) for k in IMAGE_ARRAYS + LABEL_ARRAYS}
    src = split_dir(params.data.corrupted_root, dataset, corruption, seed)
    info = {"format": PACK_FORMAT, "dataset": dataset, "corruption": corruption, "seed": seed,
            "num_classes": d.num_classes, "split_md5": d.split_md5, "raw_md5": d.raw_md5,
            "raw_verified": d.raw_verified, "counts": {k: len(arrays[k]) for k in IMAGE_ARRAYS},
            "sha256": {k: sha256(a) for k, a in arrays.items()}, "mosaics": {}}
    with atomic_dir(out) as tmp:
        for f in (SPLIT_FILE, SUMMARY_FILE):
            shutil.copy(src / f, tmp / f)
        for k in IMAGE_ARRAYS:
            parts = []
            for i in range(0, len(arrays[k]), PER_MOSAIC):
                chunk, name = arrays[k][i:i + PER_MOSAIC], f"{k}_{i // PER_MOSAIC}.webp"
                Image.fromarray(_to_mosaic(chunk)).save(tmp / name, "WEBP", lossless=True)
                parts.append({"file": name, "images": len(chunk)})
            info["mosaics"][k] = parts
        np.savez_compressed(tmp / "labels.npz", **{k: arrays[k] for k in LABEL_ARRAYS})
        (tmp / PACK_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return info


def read_pack(pack_dir: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """pack.json and the decoded arrays, every one checked against its SHA-256 (DataError names the file)."""
    from PIL import Image

    pack_dir = Path(pack_dir)
    try:
        info = json.loads((pack_dir / PACK_FILE).read_text())
        if info.get("format") != PACK_FORMAT:
            raise DataError(f"{pack_dir / PACK_FILE}: format {info.get('format')!r}, this mwnet reads {PACK_FORMAT}")
        arrays = {}
        for k in IMAGE_ARRAYS:
            parts = []
            for part in info["mosaics"][k]:
                with Image.open(pack_dir / part["file"]) as im:
                    parts.append(_from_mosaic(np.asarray(im.convert("RGB")), part["images"]))
            arrays[k] = np.concatenate(parts) if parts else np.zeros((0, 3, 32, 32), np.uint8)
        with np.load(pack_dir / "labels.npz", allow_pickle=False) as z:
            arrays |= {k: z[k] for k in LABEL_ARRAYS}
    except (OSError, KeyError, ValueError) as e:  # missing file, damaged image, json, npz
        raise DataError(f"{pack_dir}: not a readable mwnet pack ({type(e).__name__}: {e})") from None
    for k, a in arrays.items():
        if sha256(a) != info["sha256"][k]:
            where = [p["file"] for p in info["mosaics"][k]] if k in info["mosaics"] else ["labels.npz"]
            raise DataError(f"{pack_dir}: {k} ({', '.join(where)}) does not match its SHA-256 in {PACK_FILE}: "
                            f"damaged or changed after packing. Pack it again from the raw data.")
    split_md5 = hashlib.md5((pack_dir / SPLIT_FILE).read_bytes()).hexdigest()
    if split_md5 != info["split_md5"]:
        raise DataError(f"{pack_dir / SPLIT_FILE}: md5 {split_md5}, {PACK_FILE} records {info['split_md5']}")
    return info, arrays


def unpack_split(params, pack_dir: str | Path) -> Path:
    """Check a pack and install it as the split it came from under data.corrupted_root; returns the folder."""
    pack_dir = Path(pack_dir)
    info, arrays = read_pack(pack_dir)
    dest = split_dir(params.data.corrupted_root, info["dataset"], info["corruption"], info["seed"])
    if (dest / SUMMARY_FILE).is_file():
        have = json.loads((dest / SUMMARY_FILE).read_text()).get("split_md5")
        if have != info["split_md5"]:
            raise DataError(f"{dest} holds another split (split_md5 {have}, the pack's {info['split_md5']}): "
                            f"move it away first; nothing was changed")
    with atomic_dir(dest) as tmp:
        for f in (SPLIT_FILE, SUMMARY_FILE):
            shutil.copy(pack_dir / f, tmp / f)
        np.savez(tmp / IMAGES_FILE, **arrays)
        packed = info | {"images_md5": hashlib.md5((tmp / IMAGES_FILE).read_bytes()).hexdigest()}
        (tmp / PACKED_FILE).write_text(json.dumps(packed, indent=1) + "\n")
    return dest


def load_installed_images(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The images.npz of an unpacked split, checked against packed.json (used by load_split)."""
    rebuild = f"Fix: run `mwnet data unpack` on its pack again, or delete {folder} and build it from the raw data"
    try:
        info = json.loads((folder / PACKED_FILE).read_text())
        blob = (folder / IMAGES_FILE).read_bytes()
    except (OSError, ValueError) as e:
        raise DataError(f"{folder}: unpacked split unreadable ({type(e).__name__}: {e}). {rebuild}") from None
    if hashlib.md5(blob).hexdigest() != info.get("images_md5"):
        raise DataError(f"{folder / IMAGES_FILE}: md5 differs from {PACKED_FILE} (changed or damaged). {rebuild}")
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return info, {k: z[k] for k in z.files}

"""A corrupted dataset as tensors: uint8 NCHW images + int64 labels for the training part, meta set and test set.

Images stay uint8 (normalisation and augmentation happen in the training loop, on the device). The raw data
is checked against the md5 the split was built from, so a split never silently pairs with other raw data.
An unpacked portable split (mwnet/data/portable.py) brings its own images (images.npz) and needs no raw data.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mwnet.data.corrupt import SPLIT_KEYS
from mwnet.data.portable import IMAGES_FILE, load_installed_images
from mwnet.data.raw import DataError, content_md5, read_raw
from mwnet.paths import SPLIT_FILE, SUMMARY_FILE, split_dir


@dataclass
class SplitData:
    train_x: torch.Tensor  # uint8 (N, 3, 32, 32)
    train_y: torch.Tensor  # int64, labels trained with (corrupted)
    train_true: torch.Tensor  # int64, clean labels (for diagnostics only)
    meta_x: torch.Tensor
    meta_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    split_md5: str  # md5 of split.npz
    raw_verified: bool
    raw_md5: str  # content md5 of the raw data the split was built from (raw.RAW_MD5_DEFINITION)


def load_split(dataset: str, corruption: str, seed: int, *, raw_root: str | Path, corrupted_root: str | Path,
               device: str | torch.device = "cpu", check_raw: bool = True) -> SplitData:
    folder = split_dir(corrupted_root, dataset, corruption, seed)
    npz_path, summary_path = folder / SPLIT_FILE, folder / SUMMARY_FILE
    for p in (npz_path, summary_path):
        if not p.is_file():
            raise DataError(f"{p}: missing. Fix: mwnet data corrupt --dataset {dataset} --corruption "
                            f"{corruption} --seed {seed}")
    rebuild = f"Fix: rebuild it: mwnet data corrupt --dataset {dataset} --corruption {corruption} --seed {seed}"
    blob = npz_path.read_bytes()
    try:
        summary = json.loads(summary_path.read_text())
        expected_md5, raw_md5 = summary["split_md5"], summary["raw_md5"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{summary_path}: unreadable ({type(e).__name__}: {e}). {rebuild}") from None
    split_md5 = hashlib.md5(blob).hexdigest()
    if split_md5 != expected_md5:
        raise DataError(f"{npz_path}: md5 {split_md5}, but {SUMMARY_FILE} beside it records {expected_md5} "
                        f"(changed or damaged after it was built). {rebuild}")
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        missing = [k for k in SPLIT_KEYS if k not in z.files]
        if missing:
            raise DataError(f"{npz_path}: keys {missing} missing (found {z.files}). {rebuild}")
        s = {k: z[k].astype(np.int64, copy=False) for k in SPLIT_KEYS}

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    if (folder / IMAGES_FILE).is_file():  # an unpacked portable split (mwnet/data/portable.py): no raw data
        info, a = load_installed_images(folder)
        if info.get("split_md5") != split_md5:
            raise DataError(f"{folder}: {IMAGES_FILE} was packed from split {info.get('split_md5')}, not this "
                            f"{SPLIT_FILE} ({split_md5}). {rebuild}")
        n_cls = int(info["num_classes"])
        for key in ("train_label", "train_true"):
            if len(s[key]) and not (0 <= s[key].min() and s[key].max() < n_cls):
                raise DataError(f"{npz_path}: {key} outside [0, {n_cls}). {rebuild}")
        return SplitData(
            train_x=t(a["train_x"]), train_y=t(s["train_label"]), train_true=t(s["train_true"]),
            meta_x=t(a["meta_x"]), meta_y=t(a["meta_y"].astype(np.int64)),
            test_x=t(a["test_x"]), test_y=t(a["test_y"].astype(np.int64)),
            num_classes=n_cls, split_md5=split_md5,
            raw_verified=bool(summary["raw_verified"]), raw_md5=raw_md5,
        )

    raw = read_raw(raw_root, dataset)
    for key, bound in (("train_idx", len(raw.train_y)), ("meta_idx", len(raw.train_y)),
                       ("train_label", raw.num_classes), ("train_true", raw.num_classes)):
        if len(s[key]) and not (0 <= s[key].min() and s[key].max() < bound):
            raise DataError(f"{npz_path}: {key} outside [0, {bound}) for the raw {dataset} under {raw_root}. "
                            f"{rebuild}")
    if check_raw and content_md5(raw) != raw_md5:
        raise DataError(
            f"{folder}: built from raw data with md5 {raw_md5}, but the raw data under {raw_root} "
            f"has md5 {content_md5(raw)}. Fix: rebuild it (mwnet data corrupt ...) or restore the raw data."
        )

    return SplitData(
        train_x=t(raw.train_x[s["train_idx"]]),
        train_y=t(s["train_label"]),
        train_true=t(s["train_true"]),
        meta_x=t(raw.train_x[s["meta_idx"]]),
        meta_y=t(raw.train_y[s["meta_idx"]]),
        test_x=t(raw.test_x),
        test_y=t(raw.test_y),
        num_classes=raw.num_classes,
        split_md5=split_md5,
        raw_verified=bool(summary["raw_verified"]),
        raw_md5=raw_md5,
    )

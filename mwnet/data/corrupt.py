"""Corrupted datasets: the clean meta split, then imbalance / uniform noise / flip noise (docs/protocol.md, "Data").

A build is a pure function of (raw labels, corruption params, seed). All randomness of a build comes from one
generator, numpy.random.Generator(PCG64(seed)), drawn in this fixed order:
  1. for each class c = 0..C-1: a permutation of that class's training indices; the first m (meta count per
     class) are the meta set, the rest stay for training (imbalance: the first `keep[c]` of the rest);
  2. noise only: one uniform draw per training image (in ascending raw-index order) deciding whether its label
     changes, then (uniform) one class per image drawn from all C classes.
Flip targets are part of the corruption, not of the run: for each class c, its target class(es) are drawn
without replacement from the other classes by their own generator, PCG64(target_seed), so every run seed
shares one transition (protocol: "drawn once at random with a fixed seed").
Outputs (paths.split_dir): split.npz (int32 train_idx and meta_idx, indices into the raw training set; uint8
train_label and train_true; 0.1 to 0.3 MB for CIFAR, so DVC can keep dozens; loading widens them to int64),
written byte-stably (stored zip, fixed timestamps), and summary.json. The folder is written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mwnet.config import FlipNoise, ImbalanceCorruption, Params, UniformNoise
from mwnet.data.raw import RAW_MD5_DEFINITION, DataError, content_md5, raw_is_verified, read_raw
from mwnet.io import atomic_dir
from mwnet.paths import SPLIT_FILE, SUMMARY_FILE, split_dir

SPLIT_KEYS = ("train_idx", "train_label", "train_true", "meta_idx")
# Stored dtypes: indices < 2^31, class labels < 256 (CIFAR-100 has 100 classes).
SPLIT_DTYPES = {"train_idx": np.int32, "meta_idx": np.int32, "train_label": np.uint8, "train_true": np.uint8}
FORMAT_VERSION = 2
GENERATOR = "numpy.random.Generator(numpy.random.PCG64(seed))"


@dataclass
class Split:
    train_idx: np.ndarray
    train_label: np.ndarray  # label trained with
    train_true: np.ndarray
    meta_idx: np.ndarray
    flip_targets: list[list[int]] | None  # flip only: targets of each class


def make_rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def imbalance_counts(n_max: float, num_classes: int, factor: float) -> list[int]:
    """Images kept per class: int(n_max * (1/factor)^(i/(C-1))), class i = 0..C-1 in natural order."""
    if num_classes < 2:
        raise ValueError("imbalance needs at least 2 classes")
    return [int(n_max * (1.0 / factor) ** (i / (num_classes - 1))) for i in range(num_classes)]


def draw_flip_targets(num_classes: int, targets: int, target_seed: int) -> list[list[int]]:
    """For each class c, `targets` distinct classes other than c (a fixed draw for a given seed)."""
    rng = make_rng(target_seed)
    others = lambda c: np.array([k for k in range(num_classes) if k != c])  # noqa: E731
    return [[int(t) for t in rng.choice(others(c), size=targets, replace=False)] for c in range(num_classes)]


def build_split(labels: np.ndarray, num_classes: int, corruption, seed: int) -> Split:
    """The protocol on the raw training labels (int array, values 0..C-1)."""
    labels = np.asarray(labels, dtype=np.int64)
    C = num_classes
    try:
        m = corruption.meta_count_per_class(C)
    except ValueError as e:
        raise DataError(str(e)) from None
    rng = make_rng(seed)

    meta, rest = [], []
    for c in range(C):  # draws 1
        perm = rng.permutation(np.flatnonzero(labels == c))
        if len(perm) < m:
            raise DataError(f"class {c} has {len(perm)} training images, fewer than the {m} meta images asked")
        meta.append(perm[:m])
        rest.append(perm[m:])

    if isinstance(corruption, ImbalanceCorruption):
        n_max = (len(labels) - m * C) / C
        keep = imbalance_counts(n_max, C, corruption.factor)
        if min(keep) < 1:
            raise DataError(f"imbalance factor {corruption.factor:g}: class {keep.index(min(keep))} would keep "
                            f"{min(keep)} training images (per-class counts {keep}); use a smaller factor or "
                            "fewer meta images")
        for c in range(C):
            if keep[c] > len(rest[c]):
                raise DataError(f"imbalance: class {c} should keep {keep[c]} images but has {len(rest[c])} "
                                "after the meta split (classes of unequal size?)")
        rest = [r[:k] for r, k in zip(rest, keep)]

    empty = [c for c in range(C) if len(rest[c]) == 0]
    if empty:
        raise DataError(f"classes {empty} have no training images left after taking {m} meta images per class; "
                        "use fewer meta images")
    train_idx = np.sort(np.concatenate(rest))
    meta_idx = np.sort(np.concatenate(meta))
    true = labels[train_idx]
    used = true.copy()
    flip_targets = None
    if isinstance(corruption, FlipNoise):
        if C < corruption.targets + 1:
            raise DataError(f"flip with {corruption.targets} targets needs more than {C} classes")
        flip_targets = draw_flip_targets(C, corruption.targets, corruption.target_seed)
        u = rng.random(len(true))  # draws 2
        p, T = corruption.rate, np.array(flip_targets)
        # slot j of the targets when u falls in [j*p/t, (j+1)*p/t)
        slot = np.floor(u / (p / corruption.targets)).astype(np.int64) if p > 0 else np.full(len(u), -1)
        moved = u < p
        used[moved] = T[true[moved], slot[moved]]
    elif isinstance(corruption, UniformNoise):
        u = rng.random(len(true))  # draws 2
        new = rng.integers(0, C, size=len(true))
        moved = u < corruption.rate
        used[moved] = new[moved]
    elif not isinstance(corruption, ImbalanceCorruption):
        raise DataError(f"unknown corruption kind {type(corruption).__name__}")
    return Split(train_idx.astype(np.int64), used.astype(np.int64), true.astype(np.int64),
                 meta_idx.astype(np.int64), flip_targets)


def expected_wrong_share(corruption, num_classes: int) -> float:
    if isinstance(corruption, UniformNoise):
        return corruption.rate * (num_classes - 1) / num_classes
    if isinstance(corruption, FlipNoise):
        return corruption.rate
    return 0.0


def summarize(split: Split, labels: np.ndarray, num_classes: int, *, dataset: str, name: str, corruption,
              seed: int, raw_md5: str, raw_verified: bool, n_test: int, split_md5: str) -> dict:
    C = num_classes
    transition = np.zeros((C, C), dtype=np.int64)
    np.add.at(transition, (split.train_true, split.train_label), 1)
    n = len(split.train_idx)
    return {
        "format": FORMAT_VERSION,
        "dataset": dataset,
        "num_classes": C,
        "corruption": name,
        "corruption_params": corruption.model_dump(mode="json"),
        "seed": seed,
        "generator": GENERATOR,
        "raw_md5": raw_md5,
        "raw_md5_definition": RAW_MD5_DEFINITION,
        "raw_verified": raw_verified,
        "split_md5": split_md5,
        "n_train": n,
        "n_meta": int(len(split.meta_idx)),
        "n_test": n_test,
        "train_counts": np.bincount(split.train_true, minlength=C).tolist(),
        "train_label_counts": np.bincount(split.train_label, minlength=C).tolist(),
        "meta_counts": np.bincount(labels[split.meta_idx], minlength=C).tolist(),
        "wrong_label_share": (int((split.train_label != split.train_true).sum()) / n) if n else 0.0,
        "wrong_label_share_expected": expected_wrong_share(corruption, C),
        "flip_targets": split.flip_targets,
        "transition_matrix": transition.tolist(),  # rows: true class, columns: label trained with
    }


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz (readable by np.load) whose bytes depend only on the arrays: np.savez stamps the current time
    into the zip entries, so entries are written here with a fixed date, stored (no deflate: zlib builds may
    differ between machines) and fixed attributes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            arr = io.BytesIO()
            np.lib.format.write_array(arr, np.ascontiguousarray(arrays[key]), version=(1, 0),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, arr.getvalue())
    return buf.getvalue()


def split_npz_bytes(split: Split) -> bytes:
    """split.npz's bytes: the split's arrays in their stored dtypes."""
    arrays = {k: getattr(split, k) for k in SPLIT_KEYS}
    for k, a in arrays.items():
        info = np.iinfo(SPLIT_DTYPES[k])
        if len(a) and (a.min() < info.min or a.max() > info.max):
            raise DataError(f"split {k} has values outside {SPLIT_DTYPES[k].__name__} ({a.min()}..{a.max()})")
    return npz_bytes({k: a.astype(SPLIT_DTYPES[k]) for k, a in arrays.items()})


def summary_json(summary: dict) -> str:
    """Sorted keys, one line per list of numbers (a 100x100 transition matrix stays 100 lines)."""
    text = json.dumps(summary, indent=1, sort_keys=True)
    return re.sub(r"\[\s*([-0-9.e, \n]+?)\s*\]",
                  lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text) + "\n"


def corrupt_dataset(params: Params, dataset: str, name: str, seed: int) -> tuple[Path, dict]:
    """Build and write {corrupted_root}/{dataset}/{name}/seed{seed}/ from the raw data. Returns (folder, summary)."""
    if name not in params.corruptions:
        raise DataError(f"unknown corruption {name!r}; known (params/corruptions.yaml): "
                        f"{sorted(params.corruptions)}")
    if seed < 0:
        raise DataError(f"seed must be >= 0, got {seed}")
    corruption = params.corruptions[name]
    raw = read_raw(params.data.raw_root, dataset)
    raw_md5 = content_md5(raw)
    verified, _why = raw_is_verified(params.data.raw_root, dataset, raw, raw_md5)
    split = build_split(raw.train_y, raw.num_classes, corruption, seed)
    blob = split_npz_bytes(split)
    summary = summarize(split, raw.train_y, raw.num_classes, dataset=dataset, name=name, corruption=corruption,
                        seed=seed, raw_md5=raw_md5, raw_verified=verified, n_test=len(raw.test_y),
                        split_md5=hashlib.md5(blob).hexdigest())
    out = split_dir(params.data.corrupted_root, dataset, name, seed)
    with atomic_dir(out) as tmp:
        tmp.chmod(0o755)
        (tmp / SPLIT_FILE).write_bytes(blob)
        (tmp / SUMMARY_FILE).write_text(summary_json(summary))
    return out, summary

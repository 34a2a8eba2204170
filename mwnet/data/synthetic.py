"""Fake CIFAR in the official pickle layout, for tests and CI (CIFAR-100 is not available offline).

Images are low-amplitude noise plus a class signal a tiny net can learn: an 8x8 patch whose colour (c mod 7)
and position (c mod 16 on a 4x4 grid) depend on the class c, unique for up to 112 classes. Deterministic in
the seed. Files: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} or
cifar-100-python/{train, test, meta}, with the keys the official files have.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from mwnet.config import DATASET_CLASSES
from mwnet.io import atomic_dir
from mwnet.paths import RAW_DIRNAME

PALETTE = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255], [255, 255, 255]],
    dtype=np.uint8,
)
PATCH = 8
NOISE_MAX = 128  # background noise in 0..127 keeps the patch colours distinct


def fake_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, 3072) rows, channel-major like the official 'data'."""
    x = rng.integers(0, NOISE_MAX, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    for c in np.unique(labels):
        cell = int(c) % 16
        r, col = (cell // 4) * PATCH, (cell % 4) * PATCH
        idx = np.flatnonzero(labels == c)
        x[idx, :, r:r + PATCH, col:col + PATCH] = PALETTE[int(c) % len(PALETTE)][None, :, None, None]
    return x.reshape(len(labels), 3072)


def _labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def _dump(obj, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)


def write_fake_cifar(dataset: str, out_root: str | Path, train_per_class: int, test_per_class: int,
                     seed: int) -> Path:
    """Write out_root/cifar-10-batches-py or out_root/cifar-100-python (atomically); return that folder."""
    if dataset not in DATASET_CLASSES:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASET_CLASSES)}")
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError("train_per_class and test_per_class must be >= 1")
    C = DATASET_CLASSES[dataset]
    rng = np.random.Generator(np.random.PCG64(seed))
    y_train, y_test = _labels(C, train_per_class, rng), _labels(C, test_per_class, rng)
    x_train, x_test = fake_images(y_train, rng), fake_images(y_test, rng)
    target = Path(out_root) / RAW_DIRNAME[dataset]
    with atomic_dir(target) as tmp:
        tmp.chmod(0o755)
        if dataset == "cifar10":
            names = [f"fake_class_{c}" for c in range(C)]
            bounds = np.linspace(0, len(y_train), 6).astype(int)  # five training batches, like the official
            for b in range(5):
                sl = slice(bounds[b], bounds[b + 1])
                _dump({"batch_label": f"training batch {b + 1} of 5", "labels": y_train[sl].tolist(),
                       "data": x_train[sl], "filenames": [f"fake_{i}.png" for i in range(sl.start, sl.stop)]},
                      tmp / f"data_batch_{b + 1}")
            _dump({"batch_label": "testing batch 1 of 1", "labels": y_test.tolist(), "data": x_test,
                   "filenames": [f"fake_test_{i}.png" for i in range(len(y_test))]}, tmp / "test_batch")
            _dump({"label_names": names, "num_cases_per_batch": int(bounds[1]), "num_vis": 3072},
                  tmp / "batches.meta")
        else:
            fine = [f"fake_fine_{c}" for c in range(C)]
            coarse = [f"fake_coarse_{c}" for c in range(C // 5)]
            for name, y, x in (("train", y_train, x_train), ("test", y_test, x_test)):
                _dump({"filenames": [f"fake_{name}_{i}.png" for i in range(len(y))], "batch_label": name,
                       "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(), "data": x},
                      tmp / name)
            _dump({"fine_label_names": fine, "coarse_label_names": coarse}, tmp / "meta")
    return target

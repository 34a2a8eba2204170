"""Raw CIFAR in torchvision's folder layout: fetch, verify, read.

Verification accepts a folder when either
  1. every file has its official md5 (torchvision's CIFAR10/CIFAR100 class attributes, not copied here), or
  2. the files' bytes differ but their decoded content (images and labels, in the official order) matches known
     content SHA-256 sums (KNOWN_CONTENT below; CIFAR-10 only: e.g. the offline export in ../shared/data).
Anything else is refused unless allow_unverified is set, which is recorded as raw_verified=false in
RECORD_FILE inside the raw folder so that later stages report it.

The pickles are read here with a restricted unpickler (safe_io: only what CIFAR files hold; torchvision's
classes refuse files whose md5 differs, and plain pickle would run whatever a crafted file asks). Archives
are md5-checked before extraction and extracted with member checks (safe_io.safe_extract_tar).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torchvision.datasets as tvd
from torchvision.datasets.utils import calculate_md5, download_url

from mwnet.cli import UserError
from mwnet.config import DATASET_CLASSES
from mwnet.data.safe_io import UnsafeFileError, restricted_load, safe_extract_tar
from mwnet.io import atomic_dir
from mwnet.paths import raw_dir

RECORD_FILE = "VERIFIED.json"  # written by fetch beside the pickles; torchvision ignores it

# Known decoded-content sums. Definition (the one ../shared/data/cifar10/MANIFEST.json uses):
#   images: sha256 of the uint8 array (N, 32, 32, 3) in C order, i.e. the pickle's 'data' (N, 3072, channel-major
#           rows) reshaped to (N, 3, 32, 32) and transposed to NHWC;
#   labels: sha256 of the labels as a uint8 array (N,).
# "split" sums cover the five training batches concatenated (x_train, y_train) and the test batch (x_test,
# y_test): copied from MANIFEST.json. "files" sums are per batch file (same definition), computed from that
# content-verified export; they let an error name the file that differs. CIFAR-100: no sums known offline,
# so only the official files (md5) verify.
KNOWN_CONTENT: dict[str, dict | None] = {
    "cifar10": {
        "split": {
            "x_train": "47af8b02cfcfb6cdf3dbbd1969ad7f1b70f4413f6f80f437b020ee4e5bc8304a",
            "y_train": "2b7cd2f24487317614016b72ffd53071c3062f592f0eb300c18a770d41ae1253",
            "x_test": "f9b1e2130bab680db56eb06d886f7f1ad0f1183907ceff4659d1735c890f5b04",
            "y_test": "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5",
        },
        "files": {  # name: (images sha256, labels sha256)
            "data_batch_1": ("fc115a3de050d667b88cbd5b0b9612ebf996c54230fe7758f3a14bb5af9a1c27",
                             "d829dbdf32167c9d7b3687cee66d92d80d46c441308b5aca0d11e8b69e27dac9"),
            "data_batch_2": ("89e609b642f687bc796fa3bfa4211005582a0e8131d463d996d11ddb297d312e",
                             "5d18f7371ed35ea9ade77952fe958b0660a45cd6c8b8a8970030f21612cfd7e3"),
            "data_batch_3": ("93a365823e61729490a8801d80864ccd0ab1e8c98f19d71af65644d1c5f1486e",
                             "32cf77b0ee2e790b1c4384d2d82e42dc1571b87e67f6da8f444b2725b2973f65"),
            "data_batch_4": ("809eb95ecd057a36516318f5023ea619009dd70dd38193db9da43125a928e6fa",
                             "d2815e3f8f656272864920fc0edde56b04ec9cf81bf397c0dd3069f4aea51aeb"),
            "data_batch_5": ("d05b7d66d216d6df882cc760cdc0ff2f1f0437abf699ed16005c021ef0add9cb",
                             "2ddf3ab27d5d04409c94ce7b56849c243129c10de1058ae0bfe14c77e934800c"),
            "test_batch": ("f9b1e2130bab680db56eb06d886f7f1ad0f1183907ceff4659d1735c890f5b04",
                           "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5"),
        },
        # batches.meta: the class names, in label order (official)
        "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    },
    "cifar100": None,
}

RAW_MD5_DEFINITION = (
    "md5 over, in this order: train images as uint8 (N,3,32,32) C-order bytes (the pickles' 'data' rows, "
    "batches concatenated in official order), train labels as int64 little-endian, test images, test labels"
)


class DataError(UserError):
    """Raw or derived data is missing, corrupt or inconsistent. The message names file, expected, found, fix."""


class UnverifiedDataWarning(UserWarning):
    """Raw data accepted with allow_unverified."""


@dataclass(frozen=True)
class RawSpec:
    """What the official files of one dataset are, read from torchvision's class attributes."""

    dataset: str
    dirname: str
    url: str
    archive: str
    archive_md5: str
    train_files: tuple[tuple[str, str], ...]  # (name, official md5)
    test_files: tuple[tuple[str, str], ...]
    meta_file: tuple[str, str]
    names_key: str  # key of the class names in the meta file
    label_key: str  # 'labels' (CIFAR-10) or 'fine_labels' (CIFAR-100)
    num_classes: int

    @property
    def data_files(self) -> tuple[tuple[str, str], ...]:
        return self.train_files + self.test_files

    @property
    def all_files(self) -> tuple[tuple[str, str], ...]:
        return self.data_files + (self.meta_file,)


def raw_spec(dataset: str) -> RawSpec:
    if dataset not in DATASET_CLASSES:
        raise DataError(f"unknown dataset {dataset!r}; known: {sorted(DATASET_CLASSES)}")
    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[dataset]
    return RawSpec(
        dataset=dataset,
        dirname=cls.base_folder,
        url=cls.url,
        archive=cls.filename,
        archive_md5=cls.tgz_md5,
        train_files=tuple((n, m) for n, m in cls.train_list),
        test_files=tuple((n, m) for n, m in cls.test_list),
        meta_file=(cls.meta["filename"], cls.meta["md5"]),
        names_key=cls.meta["key"],
        label_key="labels" if dataset == "cifar10" else "fine_labels",
        num_classes=DATASET_CLASSES[dataset],
    )


# --------------------------------------------------------------------------------------------
# reading


@dataclass
class RawData:
    train_x: np.ndarray  # uint8 (N, 3, 32, 32)
    train_y: np.ndarray  # int64 (N,)
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    label_names: list[str]
    batch_sizes: list[tuple[str, str, int]]  # (file name, 'train'|'test', images), in file order

    def batches(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-file (images, labels) views into the concatenated arrays."""
        out, pos = {}, {"train": 0, "test": 0}
        for name, split, n in self.batch_sizes:
            x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
            out[name] = (x[pos[split]:pos[split] + n], y[pos[split]:pos[split] + n])
            pos[split] += n
        return out


def _get(d: dict, key: str):
    """Official files are Python 2 pickles: keys come back as str (latin1) or bytes depending on the loader."""
    if key in d:
        return d[key]
    if key.encode() in d:
        return d[key.encode()]
    raise KeyError(key)


def _unpickle(path: Path) -> dict:
    """Read with the CIFAR allow-list (safe_io): a crafted pickle cannot import or call anything."""
    try:
        obj = restricted_load(path)
    except UnsafeFileError as e:
        raise DataError(f"{path}: {e}. This file is not a CIFAR file; do not use its source.") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a dict, found {type(obj).__name__}")
    return obj


def read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 (N,3,32,32), int64 (N,)). DataError naming the file if it is not a CIFAR pickle."""
    try:
        d = _unpickle(path)
        x = np.asarray(_get(d, "data"), dtype=np.uint8)
        y = np.asarray(_get(d, label_key), dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 3072 or len(y) != len(x):
            raise ValueError(f"'data' has shape {x.shape} and {len(y)} labels; expected (N, 3072) and N labels")
    except FileNotFoundError:
        raise DataError(f"{path}: file missing") from None
    except DataError:
        raise
    except Exception as e:  # unpickling garbage raises many different types
        raise DataError(
            f"{path}: not a readable CIFAR batch (expected a pickle with 'data' (N,3072) uint8 and "
            f"'{label_key}'); found: {type(e).__name__}: {e}. Fix: fetch the dataset again "
            "(mwnet data fetch)."
        ) from None
    return x.reshape(-1, 3, 32, 32), y


def read_label_names(path: Path, spec: RawSpec) -> list[str]:
    try:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(_unpickle(path), spec.names_key)]
    except FileNotFoundError:
        raise DataError(f"{path}: file missing") from None
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"{path}: not a readable CIFAR meta file (expected a pickle with '{spec.names_key}'); found: "
            f"{type(e).__name__}: {e}. Fix: fetch the dataset again (mwnet data fetch)."
        ) from None
    if len(names) != spec.num_classes:
        raise DataError(f"{path}: {len(names)} class names, expected {spec.num_classes}")
    return names


def read_folder(folder: Path, spec: RawSpec) -> RawData:
    train = [read_batch(folder / n, spec.label_key) for n, _ in spec.train_files]
    test = [read_batch(folder / n, spec.label_key) for n, _ in spec.test_files]

    def cat(parts, i):
        return parts[0][i] if len(parts) == 1 else np.concatenate([p[i] for p in parts])

    sizes = [(n, "train", len(p[1])) for (n, _), p in zip(spec.train_files, train)]
    sizes += [(n, "test", len(p[1])) for (n, _), p in zip(spec.test_files, test)]
    data = RawData(cat(train, 0), cat(train, 1), cat(test, 0), cat(test, 1), spec.num_classes,
                   read_label_names(folder / spec.meta_file[0], spec), sizes)
    for split, y in (("train", data.train_y), ("test", data.test_y)):
        if len(y) and (y.min() < 0 or y.max() >= spec.num_classes):
            raise DataError(f"{folder}: {split} labels outside 0..{spec.num_classes - 1}")
    return data


def read_raw(raw_root: str | Path, dataset: str) -> RawData:
    """The raw train and test sets of `dataset` under raw_root (torchvision layout)."""
    spec = raw_spec(dataset)
    folder = raw_dir(raw_root, dataset)
    if not folder.is_dir():
        raise DataError(
            f"{folder}: raw {dataset} not found. Fix: mwnet data fetch --dataset {dataset} "
            "[--source PATH]"
        )
    return read_folder(folder, spec)


def content_md5(data: RawData) -> str:
    """The raw data's identity for derived datasets (RAW_MD5_DEFINITION): independent of pickle details."""
    h = hashlib.md5()
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        h.update(np.ascontiguousarray(x, dtype=np.uint8).data)
        h.update(np.ascontiguousarray(y, dtype="<i8").data)
    return h.hexdigest()


def content_sha256(x_nchw: np.ndarray, y: np.ndarray) -> tuple[str, str]:
    """(images, labels) sums as KNOWN_CONTENT defines them."""
    x = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    return hashlib.sha256(x.data).hexdigest(), hashlib.sha256(y.astype(np.uint8).data).hexdigest()


def read_record(raw_root: str | Path, dataset: str) -> dict | None:
    path = raw_dir(raw_root, dataset) / RECORD_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}). Fix: fetch the data again (mwnet data fetch --dataset "
                        f"{dataset} ...), which rewrites it") from None


def raw_is_verified(raw_root: str | Path, dataset: str, data: RawData,
                    md5: str | None = None) -> tuple[bool, str]:
    """(verified, why): verified only if fetch recorded it and the content is still what fetch saw.
    `md5`: content_md5(data) if the caller has it already."""
    rec = read_record(raw_root, dataset)
    if rec is None:
        return False, f"no {RECORD_FILE} in {raw_dir(raw_root, dataset)} (not placed by mwnet data fetch)"
    if rec.get("content_md5") != (md5 or content_md5(data)):
        return False, f"raw content changed since fetch ({RECORD_FILE} content_md5 differs)"
    if not rec.get("raw_verified"):
        return False, f"fetched with allow_unverified ({RECORD_FILE}: {rec.get('problems')})"
    return True, f"verified by {rec.get('method')}"


# --------------------------------------------------------------------------------------------
# verification


def check_present(folder: Path, spec: RawSpec, shown: str) -> None:
    missing = [n for n, _ in spec.all_files if not (folder / n).is_file()]
    if missing:
        present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise DataError(
            f"{shown}: file(s) missing: {', '.join(missing)}. Expected the official {spec.dataset} files "
            f"{[n for n, _ in spec.all_files]} (torchvision layout, folder {spec.dirname}/); found: "
            f"{present or 'nothing'}. Fix: point --source at a complete {spec.dirname}/ folder (or its "
            f"parent), at the official {spec.archive}, or use --source download."
        )


@dataclass
class Verification:
    verified: bool
    method: str  # official_md5 | content_sha256 | unverified
    files_md5: dict[str, str]
    problems: list[str]
    data: RawData


def verify_folder(folder: Path, spec: RawSpec, shown_as: str | None = None) -> Verification:
    """Check a folder of CIFAR files. Missing or unreadable files raise DataError; files matching no known sum
    are listed in .problems (verified=False). `shown_as` is the name used for the folder in messages."""
    known = KNOWN_CONTENT[spec.dataset]
    shown = shown_as or str(folder)
    check_present(folder, spec, shown)
    md5s = {n: calculate_md5(folder / n) for n, _ in spec.all_files}
    try:
        data = read_folder(folder, spec)
    except DataError as e:  # name the source, not the staging folder
        raise DataError(str(e).replace(str(folder), shown)) from None
    if all(md5s[n] == m for n, m in spec.all_files):
        return Verification(True, "official_md5", md5s, [], data)

    problems = []
    if known is None:
        for n, m in spec.all_files:
            if md5s[n] != m:
                problems.append(f"{shown}/{n}: md5 expected {m} (official), found {md5s[n]}; no content sums "
                                f"are known for {spec.dataset}, so only the official files verify")
    else:
        parts = data.batches()
        if data.label_names != known["label_names"]:
            problems.append(f"{shown}/{spec.meta_file[0]}: class names expected {known['label_names']}, "
                            f"found {data.label_names}")
        for n, m in spec.data_files:
            want = known["files"][n]
            got = content_sha256(*parts[n])
            if got != tuple(want):
                problems.append(
                    f"{shown}/{n}: md5 expected {m} (official), found {md5s[n]}; decoded content sha256 "
                    f"expected images {want[0]} labels {want[1]}, found images {got[0]} labels {got[1]}")
        if not problems:  # tie the per-file sums to the published whole-split sums
            got_split = dict(zip(("x_train", "y_train"), content_sha256(data.train_x, data.train_y)))
            got_split.update(zip(("x_test", "y_test"), content_sha256(data.test_x, data.test_y)))
            for k, v in known["split"].items():
                if got_split[k] != v:
                    problems.append(f"{shown}: {k} content sha256 expected {v}, found {got_split[k]}")
    return Verification(not problems, "content_sha256" if not problems else "unverified", md5s, problems, data)


# --------------------------------------------------------------------------------------------
# fetch


def _source_folder(src: Path, spec: RawSpec) -> Path:
    """A folder in torchvision layout: the data folder itself, or its parent."""
    if (src / spec.dirname).is_dir():
        return src / spec.dirname
    if any((src / n).exists() for n, _ in spec.all_files):
        return src
    raise DataError(
        f"{src}: no {spec.dataset} files found. Expected {src}/{spec.dirname}/ or the files "
        f"{[n for n, _ in spec.all_files]} directly in {src}. Fix: point --source at the folder holding "
        f"{spec.dirname}/ (or at {spec.archive})."
    )


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar"))


def fetch(dataset: str, raw_root: str | Path, source: str, allow_unverified: bool) -> dict:
    """Put `dataset` under raw_root in torchvision layout, verified, atomically. Returns the record written."""
    spec = raw_spec(dataset)
    raw_root = Path(raw_root)
    raw_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{spec.dirname}.source.", dir=raw_root))  # downloads, extraction
    try:
        archive_note = None
        if source == "download":
            try:
                download_url(spec.url, root=str(scratch), filename=spec.archive, md5=spec.archive_md5)
                if calculate_md5(scratch / spec.archive) != spec.archive_md5:  # never extract what differs
                    raise DataError(f"md5 of the downloaded {spec.archive} is not the official {spec.archive_md5}")
                safe_extract_tar(scratch / spec.archive, scratch)
            except Exception as e:
                raise DataError(
                    f"download of {spec.url} failed: {type(e).__name__}: {e}. Expected the official "
                    f"{spec.archive} (md5 {spec.archive_md5}). Fix: check the internet connection, or "
                    f"download it elsewhere and pass --source PATH (the .tar.gz or the extracted folder)."
                ) from None
            src_dir, shown = scratch / spec.dirname, f"{spec.url}:{spec.dirname}"
        else:
            path = Path(source).expanduser()
            if not path.exists():
                raise DataError(
                    f"{path}: source not found. Expected a folder in torchvision layout ({spec.dirname}/ or "
                    f"its parent) or the official {spec.archive}. Fix: correct --source or "
                    "params/data.yaml sources (or params/local.yaml)."
                )
            if _is_archive(path):
                found = calculate_md5(path)  # before anything is extracted
                archive_note = {"archive": str(path), "md5": found, "official": found == spec.archive_md5}
                if found != spec.archive_md5 and not allow_unverified:
                    raise DataError(
                        f"{path}: md5 {found} is not the official {spec.archive}'s ({spec.archive_md5}); "
                        "nothing was extracted. Fix: use the official archive (or its extracted "
                        f"{spec.dirname}/ folder, whose content is checked); for synthetic or modified "
                        "data pass --allow-unverified (recorded as raw_verified=false).")
                try:
                    safe_extract_tar(path, scratch)
                except UnsafeFileError as e:
                    raise DataError(f"{e}. Nothing from it was used. Fix: use the official {spec.archive} "
                                    f"(md5 {spec.archive_md5}).") from None
                except Exception as e:
                    raise DataError(f"{path}: cannot extract archive: {type(e).__name__}: {e}. Expected the "
                                    f"official {spec.archive} (md5 {spec.archive_md5}), found md5 {found}. "
                                    "Fix: download it again.") from None
                src_dir, shown = _source_folder(scratch, spec), f"{path}:{spec.dirname}"
            elif path.is_dir():
                src_dir = _source_folder(path, spec)
                shown = str(src_dir)
            else:
                raise DataError(f"{path}: not a folder or a .tar.gz archive. Fix: pass the {spec.dirname}/ "
                                f"folder, its parent, or {spec.archive}.")

        check_present(src_dir, spec, shown)
        with atomic_dir(raw_dir(raw_root, dataset)) as stage:
            os.chmod(stage, 0o755)
            for n, _ in spec.all_files:
                shutil.copyfile(src_dir / n, stage / n)
            v = verify_folder(stage, spec, shown_as=shown)
            if not v.verified:
                if not allow_unverified:
                    raise DataError(
                        f"{dataset} from {shown} matches neither the official files nor known content:\n  "
                        + "\n  ".join(v.problems)
                        + f"\nFix: use the official data (--source download, or the official {spec.archive} / "
                        f"its extracted {spec.dirname}/ folder); or, for synthetic or modified data, pass "
                        "--allow-unverified (recorded as raw_verified=false)."
                    )
                warnings.warn(
                    f"\n{'!' * 72}\nUNVERIFIED {dataset}: {shown} matches no known checksum; accepted because "
                    f"allow_unverified is set. Results built on it are marked raw_verified=false.\n  "
                    + "\n  ".join(v.problems) + f"\n{'!' * 72}",
                    UnverifiedDataWarning,
                    stacklevel=2,
                )
            record = {
                "dataset": dataset,
                "raw_verified": v.verified,
                "method": v.method,
                "problems": v.problems,
                "files_md5": v.files_md5,
                "content_md5": content_md5(v.data),
                "content_md5_definition": RAW_MD5_DEFINITION,
                "source": shown,
                "archive": archive_note,
                "n_train": int(len(v.data.train_y)),
                "n_test": int(len(v.data.test_y)),
            }
            (stage / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        return record
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

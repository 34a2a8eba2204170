"""Reading raw files that may come from anywhere (a mirror, a colleague's disk) without trusting them.

- restricted_load(path): unpickle a CIFAR batch or meta file allowing only what those files contain
  (builtins such as dict / list / str / bytes / int, and numpy's array reconstruction). Any other
  global is refused before it is imported, so a crafted pickle cannot run code.
- safe_extract_tar(archive, dest): every member is checked first (no absolute path, no '..', no link,
  device or fifo: CIFAR archives hold regular files and folders only); then extraction uses the
  standard library's "data" filter as a second guard. Nothing lands outside `dest`.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path, PurePosixPath


class UnsafeFileError(ValueError):
    """A raw file or archive holds something a CIFAR file never does. The message names it."""


def _numpy_multiarray():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _allowed_globals() -> dict[tuple[str, str], object]:
    import codecs

    import numpy as np

    ma = _numpy_multiarray()
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}  # how Python 3 pickles bytes at protocol 2
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # pickles name either
        allowed[(module, "_reconstruct")] = ma._reconstruct
        allowed[(module, "scalar")] = ma.scalar
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed):
        super().__init__(file, encoding="latin1")  # the official files are Python 2 pickles
        self._allowed = allowed

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafeFileError(
                f"refused global {module}.{name}: a CIFAR file holds only dicts, lists, strings, numbers "
                "and numpy arrays (nothing was imported or called)"
            ) from None


def restricted_load(path: str | Path):
    """The object pickled in `path`, read with the CIFAR allow-list; UnsafeFileError otherwise."""
    data = Path(path).read_bytes()
    return _CifarUnpickler(io.BytesIO(data), _allowed_globals()).load()


def check_tar_members(tar: tarfile.TarFile, archive: str | Path) -> None:
    """Refuse, before anything is extracted, members that could land outside the destination."""
    for m in tar.getmembers():
        p = PurePosixPath(m.name)
        if m.name.startswith(("/", "\\")) or p.is_absolute() or (len(m.name) > 1 and m.name[1] == ":"):
            raise UnsafeFileError(f"{archive}: member {m.name!r} has an absolute path")
        if ".." in p.parts:
            raise UnsafeFileError(f"{archive}: member {m.name!r} points outside the archive's folder ('..')")
        if not (m.isfile() or m.isdir()):
            kind = "link" if (m.issym() or m.islnk()) else "special file"
            target = f" -> {m.linkname!r}" if m.linkname else ""
            raise UnsafeFileError(f"{archive}: member {m.name!r} is a {kind}{target}; CIFAR archives hold "
                                  "regular files and folders only")


def safe_extract_tar(archive: str | Path, dest: str | Path) -> None:
    """Extract a .tar / .tar.gz into `dest` after check_tar_members, with tarfile's "data" filter."""
    if not hasattr(tarfile, "data_filter"):  # Python < 3.11.4 / 3.10.12: no safe extraction available
        raise UnsafeFileError(
            f"{archive}: this Python ({'.'.join(map(str, __import__('sys').version_info[:3]))}) has no "
            "tarfile extraction filters; extract the archive yourself and pass the folder, or upgrade Python"
        )
    with tarfile.open(archive) as tar:
        check_tar_members(tar, archive)
        try:
            tar.extractall(dest, filter="data")
        except tarfile.FilterError as e:  # the second guard; names the member
            raise UnsafeFileError(f"{archive}: member {e.tarinfo.name!r} refused: {e}") from None

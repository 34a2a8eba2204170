"""Untrusted raw data (a file from the wrong place): a crafted pickle must not run code, an
archive must not write outside the scratch folder, and an archive whose md5 is not the official one
is not even extracted unless the user accepts unverified data. Tiny inputs made here."""

import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mwnet.cli import main
from mwnet.data import raw as rawmod
from mwnet.data.raw import DataError, fetch, read_raw
from mwnet.data.safe_io import UnsafeFileError, restricted_load, safe_extract_tar


class Payload:
    """Unpickling this calls os.system(cmd): what a crafted data_batch_1 would do."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


@pytest.fixture
def src(tmp_path, fake_raw_root):
    d = tmp_path / "src"
    shutil.copytree(fake_raw_root, d)
    return d


def test_crafted_pickle_does_not_run_and_is_named(tmp_path, src):
    marker = tmp_path / "PWNED"
    batch = src / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": Payload(f"touch {marker}"), "labels": [0]}))
    raw_root = tmp_path / "raw"
    with pytest.raises(DataError) as e:
        fetch("cifar10", raw_root, str(src), allow_unverified=True)  # even when unverified data is allowed
    assert not marker.exists(), "the pickle's payload ran"
    msg = str(e.value)
    assert "data_batch_1" in msg and "refused global" in msg and ("posix.system" in msg or "os.system" in msg)
    assert not (raw_root / "cifar-10-batches-py").exists()


def test_cli_refuses_crafted_pickle(tmp_path, src, fake_params_dir, capsys):
    marker = tmp_path / "PWNED"
    (src / "cifar-10-batches-py" / "data_batch_1").write_bytes(
        pickle.dumps({"data": Payload(f"touch {marker}"), "labels": [0]}))
    params = tmp_path / "params"
    shutil.copytree(fake_params_dir, params)
    rc = main(["data", "fetch", "--dataset", "cifar10", "--source", str(src), "--params", str(params)])
    assert rc == 2 and not marker.exists()
    assert "refused global" in capsys.readouterr().err


def test_restricted_load_reads_numpy_arrays_and_python2_style_pickles(tmp_path):
    obj = {"data": np.arange(12, dtype=np.uint8).reshape(2, 6), "labels": [1, 2], b"batch_label": b"x",
           "n": np.int64(3)}
    for proto in (2, 4):
        f = tmp_path / f"p{proto}"
        f.write_bytes(pickle.dumps(obj, protocol=proto))
        back = restricted_load(f)
        assert np.array_equal(back["data"], obj["data"]) and back["labels"] == [1, 2] and back["n"] == 3


@pytest.mark.parametrize("global_name", ["builtins eval", "subprocess Popen", "numpy load", "torch load"])
def test_any_other_global_is_refused(tmp_path, global_name):
    module, name = global_name.split()
    # GLOBAL opcode then STOP: resolving the name is already refused, nothing is imported
    f = tmp_path / "p"
    f.write_bytes(b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n.")
    with pytest.raises(UnsafeFileError, match=f"refused global {module}.{name}"):
        restricted_load(f)


def _tar(path: Path, members: list[tuple[str, str]], base: Path | None = None) -> Path:
    """members: (name, kind) with kind 'file', 'dir', 'symlink:TARGET' or 'hardlink:TARGET'."""
    with tarfile.open(path, "w:gz") as t:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = b"hello"
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                info.type = tarfile.SYMTYPE if kind.startswith("symlink") else tarfile.LNKTYPE
                info.linkname = kind.split(":", 1)[1]
                t.addfile(info)
    return path


@pytest.mark.parametrize("member,kind,why", [
    ("../../../../{outside}/FILE", "file", "'..'"),
    ("/{outside}/FILE", "file", "absolute path"),
    ("cifar-10-batches-py/evil", "symlink:/{outside}", "is a link"),
    ("cifar-10-batches-py/hard", "hardlink:/{outside}/FILE", "is a link"),
])
def test_archive_members_outside_the_scratch_folder_are_refused(tmp_path, member, kind, why):
    outside = tmp_path / "outside"
    outside.mkdir()
    rel = str(outside).lstrip("/")
    member, kind = member.format(outside=rel), kind.format(outside=rel)
    arc = _tar(tmp_path / "cifar-10-python.tar.gz", [("cifar-10-batches-py", "dir"), (member, kind)])
    raw_root = tmp_path / "data" / "raw"
    raw_root.mkdir(parents=True)
    (raw_root / "keep.txt").write_text("a user's file")
    with pytest.raises(DataError) as e:
        fetch("cifar10", raw_root, str(arc), allow_unverified=True)  # unverified allowed: extraction is tried
    assert member in str(e.value) and why in str(e.value)
    assert list(outside.iterdir()) == [], "something was written outside the scratch folder"
    assert sorted(p.name for p in raw_root.iterdir()) == ["keep.txt"], "data/raw changed"


def test_archive_with_another_md5_is_not_extracted_without_allow_unverified(tmp_path, monkeypatch):
    arc = _tar(tmp_path / "cifar-10-python.tar.gz", [("cifar-10-batches-py", "dir")])
    called = []
    monkeypatch.setattr(rawmod, "safe_extract_tar", lambda *a: called.append(a))
    with pytest.raises(DataError, match="nothing was extracted"):
        fetch("cifar10", tmp_path / "raw", str(arc), allow_unverified=False)
    assert called == []


def test_safe_extract_keeps_a_normal_archive(tmp_path, src):
    arc = tmp_path / "ok.tar.gz"
    with tarfile.open(arc, "w:gz") as t:
        t.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    safe_extract_tar(arc, tmp_path / "out")
    assert np.array_equal(read_raw(tmp_path / "out", "cifar10").train_y, read_raw(src, "cifar10").train_y)

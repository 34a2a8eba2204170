"""Atomic outputs: a failure never leaves a half-written file or folder, and never loses the old one."""

import os
from pathlib import Path

import pytest

from mwnet import io


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.txt"
    io.write_text_atomic(target, "one")
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "one" and sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_atomic_dir_replaces_whole_folder(tmp_path):
    target = tmp_path / "split"
    for content in ("old", "new"):
        with io.atomic_dir(target) as tmp:
            (tmp / content).write_text(content)
    assert sorted(os.listdir(target)) == ["new"] and sorted(os.listdir(tmp_path)) == ["split"]


def test_atomic_dir_failure_in_the_body_keeps_the_old_folder(tmp_path):
    target = tmp_path / "split"
    with io.atomic_dir(target) as tmp:
        (tmp / "old").write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_dir(target) as tmp:
            (tmp / "half").write_text("half")
            raise RuntimeError("killed")
    assert sorted(os.listdir(target)) == ["old"] and sorted(os.listdir(tmp_path)) == ["split"]


def test_atomic_dir_failure_while_swapping_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "split"
    with io.atomic_dir(target) as tmp:
        (tmp / "old").write_text("old")
    real_rename = os.rename

    def failing_rename(src, dst):
        if str(dst) == str(target) and Path(src).parent == tmp_path:  # the new folder moving in
            raise OSError("disk gone")
        return real_rename(src, dst)

    monkeypatch.setattr(io.os, "rename", failing_rename)
    with pytest.raises(OSError, match="disk gone"):
        with io.atomic_dir(target) as tmp:
            (tmp / "new").write_text("new")
    assert sorted(os.listdir(target)) == ["old"] and sorted(os.listdir(tmp_path)) == ["split"]

"""Raw data: fetch from folder / archive / download, verification by official md5 or content sums, errors that
name file, expected, found and fix, and nothing half-written under the raw root."""

import pickle
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torchvision
import yaml
from torchvision.datasets.utils import calculate_md5

from mwnet.cli import main
from mwnet.data import raw as rawmod
from mwnet.data.raw import (
    RECORD_FILE,
    DataError,
    UnverifiedDataWarning,
    content_sha256,
    fetch,
    raw_is_verified,
    raw_spec,
    read_raw,
    verify_folder,
)
from mwnet.data.synthetic import write_fake_cifar

from conftest import copy_params


@pytest.fixture
def src(tmp_path, fake_raw_root):
    """A private copy of the fake raw data (tests may damage it)."""
    d = tmp_path / "src"
    shutil.copytree(fake_raw_root, d)
    return d


def fetch_quiet(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedDataWarning)
        return fetch(*args, **kw)


def assert_clean(raw_root: Path, allowed=()):
    """Nothing but the allowed entries (no staging or scratch folders) under raw_root."""
    left = sorted(p.name for p in raw_root.iterdir()) if raw_root.exists() else []
    assert left == sorted(allowed), f"left behind in {raw_root}: {left}"


def test_spec_comes_from_torchvision():
    s = raw_spec("cifar10")
    assert s.dirname == "cifar-10-batches-py" and s.archive_md5 == torchvision.datasets.CIFAR10.tgz_md5
    assert [n for n, _ in s.train_files] == [f"data_batch_{i}" for i in range(1, 6)]
    s = raw_spec("cifar100")
    assert s.dirname == "cifar-100-python" and [n for n, _ in s.data_files] == ["train", "test"]
    assert s.label_key == "fine_labels" and s.num_classes == 100


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("use_parent", [True, False])
def test_fetch_unverified_folder_is_recorded(tmp_path, src, dataset, use_parent):
    spec = raw_spec(dataset)
    source = src if use_parent else src / spec.dirname
    with pytest.warns(UnverifiedDataWarning, match="UNVERIFIED"):
        rec = fetch(dataset, tmp_path / "raw", str(source), allow_unverified=True)
    assert rec["raw_verified"] is False and rec["method"] == "unverified" and rec["problems"]
    assert_clean(tmp_path / "raw", [spec.dirname])
    assert sorted(p.name for p in (tmp_path / "raw" / spec.dirname).iterdir()) == sorted(
        [n for n, _ in spec.all_files] + [RECORD_FILE])
    got, want = read_raw(tmp_path / "raw", dataset), read_raw(src, dataset)
    assert np.array_equal(got.train_x, want.train_x) and np.array_equal(got.test_y, want.test_y)
    assert got.train_x.dtype == np.uint8 and got.train_x.shape[1:] == (3, 32, 32)
    ok, why = raw_is_verified(tmp_path / "raw", dataset, got)
    assert ok is False and "allow_unverified" in why
    assert raw_is_verified(src, dataset, got)[0] is False  # no record at all: not verified either


def test_cifar100_layout_has_fine_and_coarse_labels(fake_raw_root):
    d = rawmod._unpickle(fake_raw_root / "cifar-100-python" / "train")
    assert {"data", "fine_labels", "coarse_labels", "filenames", "batch_label"} <= set(d)
    r = read_raw(fake_raw_root, "cifar100")
    assert r.num_classes == 100 and len(r.train_y) == 100 * 110 and np.array_equal(r.train_y, d["fine_labels"])
    assert np.bincount(r.train_y).tolist() == [110] * 100 and len(r.label_names) == 100


def test_unverified_refused_by_default_and_nothing_written(tmp_path, src):
    with pytest.raises(DataError) as e:
        fetch("cifar10", tmp_path / "raw", str(src), allow_unverified=False)
    msg = str(e.value)
    official = dict(raw_spec("cifar10").train_files)["data_batch_1"]
    found = calculate_md5(src / "cifar-10-batches-py" / "data_batch_1")
    assert "data_batch_1" in msg and official in msg and found in msg  # file, expected, found
    assert "--allow-unverified" in msg and "Fix" in msg
    assert_clean(tmp_path / "raw")


def test_missing_file_names_it_and_keeps_existing_data(tmp_path, src):
    raw = tmp_path / "raw"
    fetch_quiet("cifar10", raw, str(src), allow_unverified=True)
    before = {p.name: p.read_bytes() for p in (raw / "cifar-10-batches-py").iterdir()}
    (src / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError) as e:
        fetch("cifar10", raw, str(src), allow_unverified=True)  # missing is never acceptable
    msg = str(e.value)
    assert "data_batch_3" in msg and "missing" in msg and "Expected" in msg and "found" in msg and "Fix" in msg
    assert_clean(raw, ["cifar-10-batches-py"])
    assert {p.name: p.read_bytes() for p in (raw / "cifar-10-batches-py").iterdir()} == before


def test_corrupt_bytes_name_the_file(tmp_path, src):
    f = src / "cifar-10-batches-py" / "test_batch"
    b = bytearray(f.read_bytes())
    f.write_bytes(bytes(b[: len(b) // 2]))  # truncated download
    with pytest.raises(DataError) as e:
        fetch("cifar10", tmp_path / "raw", str(src), allow_unverified=True)
    msg = str(e.value)
    assert f"{src / 'cifar-10-batches-py' / 'test_batch'}" in msg and "not a readable CIFAR batch" in msg
    assert "Fix" in msg and ".cifar-10-batches-py." not in msg  # names the source, not the staging folder
    assert_clean(tmp_path / "raw")


def test_source_without_cifar_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no cifar10 files found.*cifar-10-batches-py"):
        fetch("cifar10", tmp_path / "raw", str(tmp_path / "empty"), allow_unverified=True)
    with pytest.raises(DataError, match="source not found"):
        fetch("cifar10", tmp_path / "raw", str(tmp_path / "nope"), allow_unverified=True)
    assert_clean(tmp_path / "raw")


def _known_sums(folder: Path):
    r = rawmod.read_folder(folder, raw_spec("cifar10"))
    files = {n: content_sha256(x, y) for n, (x, y) in r.batches().items()}
    split = dict(zip(("x_train", "y_train"), content_sha256(r.train_x, r.train_y)))
    split.update(zip(("x_test", "y_test"), content_sha256(r.test_x, r.test_y)))
    return {"files": files, "split": split, "label_names": r.label_names}


def test_content_sums_verify_files_with_other_bytes(tmp_path, src, monkeypatch):
    folder = src / "cifar-10-batches-py"
    monkeypatch.setitem(rawmod.KNOWN_CONTENT, "cifar10", _known_sums(folder))
    # same images and labels, different pickle bytes (other filenames): still verified by content
    d = rawmod._unpickle(folder / "data_batch_2")
    d["filenames"] = ["renamed"] * len(d["labels"])
    (folder / "data_batch_2").write_bytes(pickle.dumps(d, protocol=2))
    rec = fetch("cifar10", tmp_path / "raw", str(src), allow_unverified=False)
    assert rec["raw_verified"] is True and rec["method"] == "content_sha256"
    r = read_raw(tmp_path / "raw", "cifar10")
    assert raw_is_verified(tmp_path / "raw", "cifar10", r) == (True, "verified by content_sha256")

    # one pixel changed in one batch: refused, naming that batch with expected and found sums
    want = rawmod.KNOWN_CONTENT["cifar10"]["files"]["data_batch_4"][0]
    d = rawmod._unpickle(folder / "data_batch_4")
    d["data"][7, 100] ^= 1
    (folder / "data_batch_4").write_bytes(pickle.dumps(d, protocol=2))
    got = content_sha256(d["data"].reshape(-1, 3, 32, 32), np.asarray(d["labels"]))[0]
    with pytest.raises(DataError) as e:
        fetch("cifar10", tmp_path / "raw2", str(src), allow_unverified=False)
    msg = str(e.value)
    assert "data_batch_4" in msg and want in msg and got in msg and "data_batch_2" not in msg
    assert_clean(tmp_path / "raw2")


def test_official_md5_and_torchvision_reads_the_layout(tmp_path, src, monkeypatch):
    """Pretend the fake files are the official ones: md5 verification passes and torchvision's own CIFAR10
    class (which checks md5 and reads the layout) loads exactly what read_raw reads."""
    folder = src / "cifar-10-batches-py"
    C = torchvision.datasets.CIFAR10
    md5 = {p.name: calculate_md5(p) for p in folder.iterdir()}
    monkeypatch.setattr(C, "train_list", [[n, md5[n]] for n, _ in C.train_list])
    monkeypatch.setattr(C, "test_list", [[n, md5[n]] for n, _ in C.test_list])
    monkeypatch.setattr(C, "meta", dict(C.meta, md5=md5["batches.meta"]))
    rec = fetch("cifar10", tmp_path / "raw", str(src), allow_unverified=False)
    assert rec["raw_verified"] is True and rec["method"] == "official_md5"
    tv = C(root=str(tmp_path / "raw"), train=True, download=False)
    r = read_raw(tmp_path / "raw", "cifar10")
    assert np.array_equal(tv.data, r.train_x.transpose(0, 2, 3, 1)) and tv.targets == r.train_y.tolist()
    assert tv.classes == r.label_names


def _tgz(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz", compresslevel=1) as t:
        t.add(folder, arcname=folder.name)
    return out


def test_fetch_from_archive(tmp_path, src):
    arc = _tgz(src / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz")
    rec = fetch_quiet("cifar100", tmp_path / "raw", str(arc), allow_unverified=True)
    assert rec["archive"]["official"] is False and rec["archive"]["md5"] == calculate_md5(arc)
    assert np.array_equal(read_raw(tmp_path / "raw", "cifar100").train_y, read_raw(src, "cifar100").train_y)
    assert_clean(tmp_path / "raw", ["cifar-100-python"])


def test_download_uses_torchvision_with_official_url_and_md5(tmp_path, src, monkeypatch):
    arc = _tgz(src / "cifar-10-batches-py", tmp_path / "local.tar.gz")
    C = torchvision.datasets.CIFAR10
    monkeypatch.setattr(C, "tgz_md5", calculate_md5(arc))  # stands in for the official archive
    calls = []

    def fake_download(url, root, filename=None, md5=None):
        calls.append((url, filename, md5))
        shutil.copyfile(arc, Path(root) / filename)

    monkeypatch.setattr(rawmod, "download_url", fake_download)
    fetch_quiet("cifar10", tmp_path / "raw", "download", allow_unverified=True)
    assert calls == [(C.url, C.filename, C.tgz_md5)]
    assert_clean(tmp_path / "raw", ["cifar-10-batches-py"])  # the download scratch folder is gone

    def failing(*a, **k):
        raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(rawmod, "download_url", failing)
    with pytest.raises(DataError, match=r"download of .* failed.*--source PATH"):
        fetch("cifar10", tmp_path / "raw2", "download", allow_unverified=True)
    assert_clean(tmp_path / "raw2")


def test_downloaded_archive_with_another_md5_is_never_extracted(tmp_path, src, monkeypatch):
    arc = _tgz(src / "cifar-10-batches-py", tmp_path / "local.tar.gz")
    monkeypatch.setattr(rawmod, "download_url", lambda url, root, filename=None, md5=None:
                        shutil.copyfile(arc, Path(root) / filename))
    extracted = []
    monkeypatch.setattr(rawmod, "safe_extract_tar", lambda *a: extracted.append(a))
    with pytest.raises(DataError, match="is not the official"):
        fetch("cifar10", tmp_path / "raw", "download", allow_unverified=True)
    assert extracted == [] and assert_clean(tmp_path / "raw") is None


def test_bytes_keys_are_read(tmp_path):
    """Python 2 pickles loaded as bytes keep bytes keys; the reader accepts both."""
    folder = write_fake_cifar("cifar10", tmp_path, 3, 2, seed=5)
    ref = read_raw(tmp_path, "cifar10")
    for f in folder.iterdir():
        d = rawmod._unpickle(f)
        f.write_bytes(pickle.dumps({k.encode(): v for k, v in d.items()}))
    r = read_raw(tmp_path, "cifar10")
    assert np.array_equal(r.train_x, ref.train_x) and r.label_names == ref.label_names


def test_verify_folder_meta_mismatch_is_reported_without_known_sums(tmp_path, src, monkeypatch):
    folder = src / "cifar-100-python"
    C = torchvision.datasets.CIFAR100
    md5 = {p.name: calculate_md5(p) for p in folder.iterdir()}
    monkeypatch.setattr(C, "train_list", [["train", md5["train"]]])
    monkeypatch.setattr(C, "test_list", [["test", md5["test"]]])
    v = verify_folder(folder, raw_spec("cifar100"))  # data official, meta not: not verified
    assert not v.verified and len(v.problems) == 1 and "meta" in v.problems[0]


def test_cli_fetch_uses_params_source(tmp_path, src, capsys):
    raw = tmp_path / "raw"
    params = copy_params(tmp_path / "params", raw, tmp_path / "corrupted")
    data = yaml.safe_load((params / "data.yaml").read_text())
    data["sources"]["cifar10"] = {"location": str(src), "allow_unverified": False}
    (params / "data.yaml").write_text(yaml.safe_dump(data))
    assert main(["data", "fetch", "--dataset", "cifar10", "--params", str(params)]) == 2
    assert "mwnet: error:" in capsys.readouterr().err
    assert_clean(raw)
    assert main(["data", "fetch", "--dataset", "cifar10", "--allow-unverified", "--params", str(params)]) == 0
    out = capsys.readouterr()
    assert "UNVERIFIED" in out.err and "raw_verified=false" in out.out
    assert (raw / "cifar-10-batches-py" / RECORD_FILE).is_file()
    data["sources"]["cifar10"]["allow_unverified"] = True  # the same, from params
    (params / "data.yaml").write_text(yaml.safe_dump(data))
    assert main(["data", "fetch", "--dataset", "cifar10", "--params", str(params)]) == 0


def test_synth_is_deterministic_with_a_class_signal(tmp_path, capsys):
    args = ["data", "synth", "--dataset", "cifar10", "--train-per-class", "4", "--test-per-class", "2"]
    assert main(args + ["--out", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert "--allow-unverified" in capsys.readouterr().out
    assert main(args + ["--out", str(tmp_path / "b"), "--seed", "3"]) == 0
    assert main(args + ["--out", str(tmp_path / "c"), "--seed", "4"]) == 0
    files = lambda d: {p.name: p.read_bytes() for p in (d / "cifar-10-batches-py").iterdir()}  # noqa: E731
    assert files(tmp_path / "a") == files(tmp_path / "b") != files(tmp_path / "c")
    r = read_raw(tmp_path / "a", "cifar10")
    assert np.bincount(r.train_y).tolist() == [4] * 10 and np.bincount(r.test_y).tolist() == [2] * 10
    # class c: an 8x8 patch of a class colour at a class position, brighter than the background noise
    for c in range(10):
        x = r.train_x[r.train_y == c]
        row, col = (c % 16) // 4 * 8, (c % 16) % 4 * 8
        patch = x[:, :, row:row + 8, col:col + 8]
        assert (patch == patch[:1]).all() and patch.max() == 255
    assert main(args[:4] + ["--out", str(tmp_path / "d"), "--train-per-class", "0"]) == 2

"""Shared fixtures: small fake CIFAR-10/100 in the official layout, params pointing at it, built splits.

    fake_raw_root      tmp folder (one per test run) with cifar-10-batches-py/ (120 train / 20 test per class) and
                       cifar-100-python/ (110 / 5 per class), written by mwnet.data.synthetic.write_fake_cifar.
                       Enough for every corruption in params/ (noise meta: 100/class on CIFAR-10; imbalance 100
                       leaves >= 1 image per class). Unverified (no VERIFIED.json): raw_verified is false.
    fake_params_dir    copy of params/ (one per test run) whose data.yaml points at fake_raw_root and a
                       corrupted_root (pass it as --params, or load_params(fake_params_dir)).
    fake_split         function fake_split(dataset, corruption, seed=1) -> corrupted_root: builds the split
                       once per test run, then load it with mwnet.data.loading.load_split(...,
                       raw_root=fake_raw_root, corrupted_root=<returned path>).
Do not modify these folders in a test; copy them first.
"""

from pathlib import Path

import pytest
import yaml

from mwnet.config import load_params
from mwnet.data.synthetic import write_fake_cifar

REPO = Path(__file__).resolve().parents[1]
FAKE_SIZES = {"cifar10": (120, 20), "cifar100": (110, 5)}  # (train, test) images per class
FAKE_SEED = 0


@pytest.fixture
def single_thread():
    """One torch intra-op thread for the test: on a shared 2-core machine, threads that wait on a busy
    core make small CPU ops many times slower (tests of tiny nets gain nothing from more)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def fake_raw_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fake_raw")
    for dataset, (train, test) in FAKE_SIZES.items():
        write_fake_cifar(dataset, root, train, test, FAKE_SEED)
    return root


def copy_params(dst: Path, raw_root: Path, corrupted_root: Path) -> Path:
    """A copy of the repo's params/ with data.raw_root / corrupted_root replaced."""
    import shutil

    shutil.copytree(REPO / "params", dst, ignore=shutil.ignore_patterns("local.yaml"))
    data = yaml.safe_load((dst / "data.yaml").read_text())
    data["raw_root"], data["corrupted_root"] = str(raw_root), str(corrupted_root)
    (dst / "data.yaml").write_text(yaml.safe_dump(data))
    return dst


@pytest.fixture(scope="session")
def fake_params_dir(tmp_path_factory, fake_raw_root) -> Path:
    base = tmp_path_factory.mktemp("fake_params")
    return copy_params(base / "params", fake_raw_root, base / "corrupted")


@pytest.fixture(scope="session")
def fake_split(fake_params_dir):
    from mwnet.data.corrupt import corrupt_dataset
    from mwnet.paths import split_dir

    params = load_params(fake_params_dir)
    root = Path(params.data.corrupted_root)

    def build(dataset: str, corruption: str, seed: int = 1) -> Path:
        if not split_dir(root, dataset, corruption, seed).exists():
            corrupt_dataset(params, dataset, corruption, seed)
        return root

    return build

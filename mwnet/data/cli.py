"""`mwnet data fetch|corrupt|synth`."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

from mwnet.config import DATASET_CLASSES, DATASET_TRAIN_PER_CLASS, load_params

# Test-set images per class of the official splits: `synth` writes full-size stand-ins by default.
TEST_PER_CLASS = {"cifar10": 1000, "cifar100": 100}


def _fetch(args) -> int:
    from mwnet.data.raw import UnverifiedDataWarning, fetch

    params = load_params(args.params, profile=args.profile)
    src = params.data.sources[args.dataset]
    source = args.source or src.location
    allow = args.allow_unverified or src.allow_unverified
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # print the loud warning without Python's decoration
        warnings.simplefilter("always", UnverifiedDataWarning)
        rec = fetch(args.dataset, params.data.raw_root, source, allow)
    for w in caught:
        print(w.message, file=sys.stderr)
    state = f"verified ({rec['method']})" if rec["raw_verified"] else "UNVERIFIED (raw_verified=false)"
    print(f"{args.dataset}: {rec['n_train']} train + {rec['n_test']} test images from {rec['source']} -> "
          f"{params.data.raw_root}, {state}, content md5 {rec['content_md5']} [{time.perf_counter() - t0:.1f} s]")
    return 0


def _corrupt(args) -> int:
    from mwnet.data.corrupt import corrupt_dataset

    params = load_params(args.params, profile=args.profile)
    t0 = time.perf_counter()
    out, s = corrupt_dataset(params, args.dataset, args.corruption, args.seed)
    print(f"{out}: {s['n_train']} training + {s['n_meta']} meta images, wrong labels "
          f"{100 * s['wrong_label_share']:.2f}% (expected {100 * s['wrong_label_share_expected']:.2f}%), "
          f"raw_verified={s['raw_verified']} [{time.perf_counter() - t0:.1f} s]")
    if not s["raw_verified"]:
        print("WARNING: built from raw data that is not verified (see summary.json raw_verified)")
    return 0


def _pack(args) -> int:
    from mwnet.data.portable import pack_split

    params = load_params(args.params, profile=args.profile)
    t0 = time.perf_counter()
    info = pack_split(params, args.dataset, args.corruption, args.seed, args.out)
    size = sum(f.stat().st_size for f in Path(args.out).iterdir())
    print(f"{args.out}: {info['counts']['train_x']} training + {info['counts']['meta_x']} meta + "
          f"{info['counts']['test_x']} test images, {size / 2**20:.1f} MiB "
          f"[{time.perf_counter() - t0:.1f} s]; install it elsewhere with: mwnet data unpack {args.out}")
    return 0


def _unpack(args) -> int:
    from mwnet.data.portable import unpack_split

    params = load_params(args.params, profile=args.profile)
    t0 = time.perf_counter()
    dest = unpack_split(params, args.pack)
    print(f"{args.pack} -> {dest} (every array matched its SHA-256) [{time.perf_counter() - t0:.1f} s]")
    return 0


def _synth(args) -> int:
    from mwnet.data.synthetic import write_fake_cifar

    from mwnet.cli import UserError

    train = DATASET_TRAIN_PER_CLASS[args.dataset] if args.train_per_class is None else args.train_per_class
    test = TEST_PER_CLASS[args.dataset] if args.test_per_class is None else args.test_per_class
    try:
        out = write_fake_cifar(args.dataset, args.out, train, test, args.seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"wrote fake {args.dataset} ({train}/class train, {test}/class test, seed {args.seed}) to {out}; "
          f"use it with: mwnet data fetch --dataset {args.dataset} --source {args.out} --allow-unverified")
    return 0


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="raw data and corrupted datasets")
    sub = data.add_subparsers(dest="data_command", required=True)
    datasets = sorted(DATASET_CLASSES)

    f = sub.add_parser("fetch", help="put verified raw CIFAR under data.raw_root (torchvision layout)")
    f.add_argument("--dataset", required=True, choices=datasets)
    f.add_argument("--source", default=None,
                   help="'download', a folder (torchvision layout, or its parent) or the official .tar.gz "
                        "(default: params/data.yaml sources)")
    f.add_argument("--allow-unverified", action="store_true",
                   help="accept data matching no known checksum (recorded as raw_verified=false)")
    f.add_argument("--params", default="params", help="parameter folder (default: params)")
    f.add_argument("--profile", default=None, help="profile to apply (default: params/run.yaml)")
    f.set_defaults(func=_fetch)

    c = sub.add_parser("corrupt", help="build the meta split and a corrupted training set")
    c.add_argument("--dataset", required=True, choices=datasets)
    c.add_argument("--corruption", required=True, help="a name from params/corruptions.yaml")
    c.add_argument("--seed", required=True, type=int)
    c.add_argument("--params", default="params", help="parameter folder (default: params)")
    c.add_argument("--profile", default=None,
                   help="profile to apply (default: params/run.yaml); profiles may overlay corruptions")
    c.set_defaults(func=_corrupt)

    p = sub.add_parser("pack", help="copy one split with the images it uses, to train where the raw data is not")
    p.add_argument("--dataset", required=True, choices=datasets)
    p.add_argument("--corruption", required=True, help="a name from params/corruptions.yaml")
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--out", required=True, help="folder to write (replaced whole)")
    p.add_argument("--params", default="params", help="parameter folder (default: params)")
    p.add_argument("--profile", default=None, help="profile to apply (default: params/run.yaml)")
    p.set_defaults(func=_pack)

    u = sub.add_parser("unpack", help="check a pack and install its split under data.corrupted_root")
    u.add_argument("pack", help="a folder written by `mwnet data pack`")
    u.add_argument("--params", default="params", help="parameter folder (default: params)")
    u.add_argument("--profile", default=None, help="profile to apply (default: params/run.yaml)")
    u.set_defaults(func=_unpack)

    s = sub.add_parser("synth", help="write fake CIFAR in the official pickle layout (tests, CI)")
    s.add_argument("--dataset", required=True, choices=datasets)
    s.add_argument("--out", required=True, help="folder to write cifar-10-batches-py/ or cifar-100-python/ in")
    s.add_argument("--train-per-class", type=int, default=None,
                   help="default: the official size (5000 CIFAR-10, 500 CIFAR-100)")
    s.add_argument("--test-per-class", type=int, default=None,
                   help="default: the official size (1000 CIFAR-10, 100 CIFAR-100)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_synth)

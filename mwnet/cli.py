"""`mwnet` command line. Each command group lives in its own module and registers itself here.

    mwnet data fetch|corrupt|synth ...   mwnet/data/cli.py
    mwnet train ...                       mwnet/train_cli.py
    mwnet report ...                      mwnet/report.py
    mwnet plan ...                        mwnet/plan.py
    mwnet params check                    validates params/ (this file)
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mwnet.config import ParamsError, load_params

# (module, attribute): each exposes register(subparsers); imported lazily so `mwnet --help` is fast
COMMAND_MODULES = ["mwnet.data.cli", "mwnet.train_cli", "mwnet.report", "mwnet.plan"]


class UserError(Exception):
    """Bad input from the user (files, arguments). Printed without a traceback; exit status 2."""


def _params_check(args) -> int:
    p = load_params(args.params, profile=args.profile)
    n = sum(1 for _ in p.cells())
    print(f"params OK: {args.params} (profile {p.profile}): {n} runs in the grid")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mwnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pc = sub.add_parser("params", help="validate parameter files")
    pc_sub = pc.add_subparsers(dest="params_command", required=True)
    chk = pc_sub.add_parser("check", help="validate every file in params/ and report the grid size")
    chk.add_argument("--params", default="params", help="parameter folder (default: params)")
    chk.add_argument("--profile", default=None, help="profile to apply (default: params/run.yaml)")
    chk.set_defaults(func=_params_check)
    for mod_name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name and (mod_name + ".").startswith(e.name + "."):  # group not built yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ParamsError, UserError) as e:
        print(f"mwnet: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

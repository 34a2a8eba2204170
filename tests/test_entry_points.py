"""One behaviour whichever way the pipeline is started: the README's plain `snakemake --cores 4 all`,
each stage of dvc.yaml and CI's call parse to the same Snakemake settings (the workflow profile in
profiles/default/ is picked up by every one of them), and `dvc repro` follows the active profile's file."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("keep_going", "rerun_triggers", "rerun_incomplete", "set_threads", "show_failed_logs")


def snakemake_settings(cmdline: str) -> dict:
    from snakemake.cli import parse_args

    argv = shlex.split(cmdline)
    assert argv[0] == "snakemake", cmdline
    old = os.getcwd()
    os.chdir(ROOT)  # Snakemake looks for profiles/default beside the Snakefile it finds here
    try:
        _, args = parse_args(argv[1:])
    finally:
        os.chdir(old)
    return {k: getattr(args, k) for k in SETTINGS}


def dvc_commands() -> list[str]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return [s["cmd"] for s in stages.values()]


def ci_commands() -> list[str]:
    return [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()
            if line.strip().startswith("snakemake --cores")]


def test_readme_dvc_and_ci_start_snakemake_alike():
    readme = snakemake_settings("snakemake --cores 4 all")
    # the settings the pipeline relies on: stamps decide reruns; one failed run does not stop the rest
    assert readme["keep_going"] and readme["rerun_incomplete"]
    assert {t.name for t in readme["rerun_triggers"]} == {"MTIME"}
    assert not readme["set_threads"], "threads per training job come from params/run.yaml, which the plan reads"
    commands = dvc_commands() + ci_commands()
    assert len(commands) >= 4
    for cmd in commands:
        assert snakemake_settings(cmd) == readme, cmd


def test_workflow_profile_can_be_turned_off():
    """The defaults come from profiles/default (and only there): `--workflow-profile none` drops them."""
    assert not snakemake_settings("snakemake --workflow-profile none --cores 4 all")["keep_going"]


def test_dvc_tracks_the_active_profiles_file_and_augmentation():
    """Editing params/profiles/<active>.yaml (any profile, a new one included) changes a DVC param."""
    text = (ROOT / "dvc.yaml").read_text()
    spec = yaml.safe_load(text)
    assert "params/run.yaml:profile" in spec["vars"]
    for name in ("splits", "runs"):
        files = [next(iter(p)) if isinstance(p, dict) else p for p in spec["stages"][name]["params"]]
        assert "params/profiles/${profile}.yaml" in files, name
    runs = {next(iter(p)): p[next(iter(p))] for p in spec["stages"]["runs"]["params"] if isinstance(p, dict)}
    assert "augmentation" in runs["params/data.yaml"]
    # every profile the CLI accepts has its file, so the interpolated path always exists
    from mwnet.plan import available_profiles

    for profile in available_profiles(ROOT / "params"):
        assert (ROOT / "params/profiles" / f"{profile}.yaml").is_file(), profile
    assert not re.search(r"params/profiles/(quick|mini)\.yaml", text), "a profile named in dvc.yaml"

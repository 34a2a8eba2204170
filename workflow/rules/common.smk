# Shared by every rule: params/, the resolved specification of each job, and the stamps.
#
# Why stamps. DVC restores files without their modification times and does not version
# .snakemake/ (Snakemake's record of the params each output was made with), so neither mtimes nor
# Snakemake's params trigger can tell, after `dvc checkout` / `dvc pull` or in a fresh clone, what
# is up to date. Instead each job's declared output is a small stamp file, spec-<hash>.json, whose
# name is the hash of everything that determines the job's result (the resolved recipe, corruption,
# seed, ...) and whose content is that specification. The stamp is written only after the tool has
# finished and its outputs exist (workflow/scripts/stamp.py), so:
#   - editing params/ changes the hash of exactly the affected jobs: their stamps are missing, they
#     rerun, and nothing else does (a downstream job's spec contains its upstream spec);
#   - inputs are ancient(): a restored file with a new mtime triggers nothing;
#   - a killed job leaves no stamp, so a later run redoes it (training resumes from its checkpoint);
#   - every declared output is hash-named, so whatever .snakemake/ recorded about it (params, input
#     files) is consistent with it, whichever version of params/ is checked out.
# The tools' own outputs (split.npz, metrics.json, ...) are written atomically by the tools. Not
# tracked: code. After changing what a tool computes, use --forcerun RULE (or bump SPEC_FORMAT).

import hashlib
import json
import os
import re
import shlex
import sys
from pathlib import Path

from mwnet import paths
from mwnet.config import BASELINES, ParamsError, load_params

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

PARAMS_DIR = str(config.get("params", "params"))
try:
    P = load_params(PARAMS_DIR, profile=None if config.get("profile") is None else str(config["profile"]))
except ParamsError as e:
    # A clean message and a non-zero exit before the DAG is built, so no job starts.
    sys.stderr.write(f"mwnet: error: {e}\n(no job was started; fix the parameter files and run again)\n")
    sys.exit(2)

PROFILE = P.profile
# What the rules' shell commands run; passed to each rule as params (Snakemake's provenance, its lint)
MWNET = str(config.get("mwnet") or f"{shlex.quote(sys.executable)} -m mwnet.cli")
PARAMS_ARG = f"--params {shlex.quote(PARAMS_DIR)}"
TRAIN_THREADS = str(config.get("train_threads", P.run.train_threads))  # the plan assumes it too
if not TRAIN_THREADS.isdigit() or int(TRAIN_THREADS) < 1:
    sys.stderr.write(f"mwnet: error: --config train_threads={TRAIN_THREADS}: must be a whole number >= 1 "
                     "(default: params/run.yaml train_threads)\n(no job was started)\n")
    sys.exit(2)
TRAIN_THREADS = int(TRAIN_THREADS)
LOGS = "logs"  # logs of the jobs whose outputs are not in a folder of their own (Snakemake's convention)
SPEC_FORMAT = 1  # bump to invalidate every stamp (e.g. after a change in the tools' semantics)

wildcard_constraints:
    dataset="|".join(re.escape(d) for d in P.grid.datasets),
    corruption="|".join(re.escape(c) for c in P.corruptions),
    arch="|".join([r"1(-[1-9][0-9]*)*-1"] + [re.escape(b) for b in BASELINES]),
    seed=r"\d+",
    hash=r"[0-9a-f]{12}",


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def file_sha256(path) -> str | None:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


# ---- what determines each job's result


def split_spec(dataset: str, corruption: str, seed: int) -> dict:
    c = P.corruptions[corruption].model_dump(mode="json")
    c.pop("recipe")  # which recipe trains on the split does not change the split
    return {"format": SPEC_FORMAT, "stage": "split", "dataset": dataset, "corruption": corruption,
            "seed": int(seed), "corruption_spec": c}


def run_spec(dataset: str, corruption: str, arch: str, seed: int) -> dict:
    return {"format": SPEC_FORMAT, "stage": "train", "profile": PROFILE, "dataset": dataset,
            "corruption": corruption, "arch": arch, "seed": int(seed),
            "recipe": P.run_recipe(corruption, arch),
            "weight_curve": P.report.weight_curve.model_dump(mode="json"),
            "augmentation": P.data.augmentation.model_dump(mode="json"),
            "split": split_spec(dataset, corruption, seed)}


# ---- where things are (patterns with Snakemake wildcards; the profile is fixed per invocation)

SPLIT_DIR = str(Path(P.data.corrupted_root, paths.SPLIT_DIR))
RUN_DIR = str(Path(P.report.models_root, paths.RUN_DIR.format(
    profile=PROFILE, dataset="{dataset}", corruption="{corruption}", arch="{arch}", seed="{seed}")))
SPLIT_STAMP = str(Path(SPLIT_DIR, "spec-{hash}.json"))
RUN_STAMP = str(Path(RUN_DIR, "spec-{hash}.json"))
RUN_LOG = str(Path(RUN_DIR, "spec-{hash}.log"))
RESULTS = Path(P.report.results_root)


def split_stamp(dataset, corruption, seed) -> str:
    spec = split_spec(dataset, corruption, seed)
    return SPLIT_STAMP.format(dataset=dataset, corruption=corruption, seed=seed, hash=spec_hash(spec))


def run_stamp(dataset, corruption, arch, seed) -> str:
    spec = run_spec(dataset, corruption, arch, seed)
    return RUN_STAMP.format(dataset=dataset, corruption=corruption, arch=arch, seed=seed, hash=spec_hash(spec))


SPLIT_STAMPS = sorted({split_stamp(d, c, s) for d, c, _, s in P.cells()})
RUN_STAMPS = [run_stamp(*cell) for cell in P.cells()]

REPORT_SPEC = {
    "format": SPEC_FORMAT, "stage": "report", "profile": PROFILE,
    "grid": P.grid.model_dump(mode="json"),
    "report": P.report.model_dump(mode="json"),
    "paper_table_sha256": file_sha256(P.report.paper_table),
    "corruptions": {c: P.corruptions[c].model_dump(mode="json") for c in P.grid.corruptions},  # labels
    "runs": [Path(s).stem for s in RUN_STAMPS],  # spec-<hash> of every run, in grid order
}
# in a folder of its own: results/ also holds git-tracked reference results (results/reference/)
REPORT_STAMP = str(RESULTS / "stamp" / f"spec-{spec_hash(REPORT_SPEC)}.json")
REPORT_LOG = str(RESULTS / "stamp" / f"spec-{spec_hash(REPORT_SPEC)}.log")
REPORT_FILES = [str(RESULTS / n) for n in ("table1.md", "table1.csv", "table1.tex", "metrics.json",
                                           "figures/weight_curves.png", "figures/test_accuracy.png",
                                           "figures/weight_groups.png")]


# ---- stamps (written by workflow/scripts/stamp.py from the rules' shell commands)

STAMP = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(workflow.basedir) / 'workflow/scripts/stamp.py'))}"


def checked_spec(kind: str, spec: dict, wildcards) -> str:
    """JSON of `spec` after checking that the requested stamp is the current one."""
    if spec_hash(spec) != wildcards.hash:
        raise WorkflowError(
            f"{kind} stamp spec-{wildcards.hash}.json does not match params/ (current: spec-{spec_hash(spec)}"
            ".json); request targets by rule name (all, splits, runs), not by stamp path"
        )
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def print_summary() -> None:
    """A few closing lines (Snakemake's onsuccess): where the results are and how many runs exist."""
    done = sum(1 for cell in P.cells() if (paths.run_dir(P.report.models_root, PROFILE, *cell) / "metrics.json").exists())
    lines = [f"mwnet: profile {PROFILE}: {done} of {len(RUN_STAMPS)} runs finished"]
    table = RESULTS / "table1.md"
    if Path(REPORT_STAMP).exists():
        lines.append(f"  table:   {table} (also .csv, .tex; metrics.json)")
        lines.append(f"  figures: {RESULTS / 'figures'}/")
    lines.append(f"  runs:    {P.report.models_root}/{PROFILE}/ (per run: metrics.json, history.csv, spec-*.log)")
    lines.append(f"  browse:  mlflow ui --backend-store-uri {P.tracking.tracking_uri}")
    print("\n".join(lines), file=sys.stderr)


# ---- the plan: printed before the first job; on a CPU, a run far too long for it stops here

PLAN_FILE = Path(".snakemake") / "mwnet-plan.json"  # read by `stamp.py progress` in each training job


def plan_and_guard() -> None:
    """Snakemake's onstart (not on a dry run): print the plan; exit 3 before any job when the
    profile's estimate on this CPU is above params/run.yaml's cpu_max_hours, unless allowed.
    --config device=cuda: the training jobs run on GPU nodes elsewhere (a cluster's login node).

    Only public settings are read: --cores (workflow.cores) and the threads per training job
    (TRAIN_THREADS, params/run.yaml). Snakemake offers no public interface to a rule's threads after
    --set-threads or to --resources, so a thread count set with --set-threads train=K is not seen
    here, and on GPUs the plan assumes one run per local GPU at a time."""
    from mwnet.plan import describe, guard_message, make_plan, write_progress_file

    try:
        cores = workflow.cores
    except WorkflowError:  # a cluster executor (--jobs N): jobs run elsewhere, not on these cores
        cores = None
    plan = make_plan(P, cores or TRAIN_THREADS, config.get("device"), TRAIN_THREADS)
    print(describe(plan), file=sys.stderr)
    allowed = str(config.get("allow_long_cpu_run", "")).lower() in ("1", "true", "yes")
    msg = None if allowed or cores is None else guard_message(P, plan, cores, TRAIN_THREADS)
    if msg:
        sys.stderr.write(f"{msg}\n")
        sys.exit(3)
    write_progress_file(PLAN_FILE, plan, RUN_STAMPS)

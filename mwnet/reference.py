"""Keeping long runs in the repository: finished runs as reference results, unfinished ones as a
committed checkpoint that the next machine resumes from.

A run at the paper's scale outlasts the machine it starts on (a GPU job of minutes, a CPU machine of
hours). Its progress is kept in git:
- unfinished: PARTIAL/DATASET/CORRUPTION/ARCH/seedS/checkpoint.pt + train.log (every segment's log so
  far, oldest first); resumed elsewhere by copying the checkpoint back into the run folder;
- finished: RUNS/PROFILE/DATASET/CORRUPTION/ARCH/seedS/ metrics.json, history.csv, weight_curve.csv,
  train.log, provenance.json (no weights), its partial removed, and the table of every finished run
  rebuilt beside the paper (`mwnet report --models-root RUNS --results-root ...`).
Used by benchmarks/collect_device_results.py (GPU jobs) and workflow/scripts/reference_runs.py (CPU).
A resumed run is bit-identical to an uninterrupted one on the same machine and thread count; each
log segment says where it ran (`mwnet train at commit ... on ...`), so a move between machines shows.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from mwnet.io import atomic_path, write_json_atomic, write_text_atomic

RUN_FILES = ("metrics.json", "history.csv", "weight_curve.csv")
SEGMENT_RE = re.compile(r"^mwnet train at commit (\S+)(?: \(uncommitted changes\))?: computing in (\S+), (\S+), "
                        r"(\d+) thread\(s\) on (.+)$")
RESUME_RE = re.compile(r"^resuming \S+ after epoch (\d+)/(\d+)$")
EPOCH_RE = re.compile(r"^epoch (\d+)/(\d+) ")


def text_of(path: Path) -> str:
    """A log's text, empty when it does not exist (a run that never started writing one)."""
    return path.read_text() if path.is_file() else ""


def last_epoch(log_text: str) -> str:
    lines = [line for line in log_text.splitlines() if EPOCH_RE.match(line)]
    return lines[-1].split("|")[0].strip() if lines else "no epoch finished"


def segments(log_text: str) -> list[dict]:
    """One entry per process that trained the run: the epoch it started after, the epochs it finished,
    and, where its log says so, the commit, precision, memory format, threads and device."""
    out: list[dict] = []
    for line in log_text.splitlines():
        if m := RESUME_RE.match(line):  # a resumed process logs this first, then its header
            out.append({"after_epoch": int(m.group(1)), "epochs_done": 0})
        elif m := SEGMENT_RE.match(line):
            if not out or out[-1]["epochs_done"] or "commit" in out[-1]:  # a process that started afresh
                out.append({"after_epoch": 0, "epochs_done": 0})
            out[-1].update(commit=m.group(1), precision=m.group(2), memory_format=m.group(3),
                           threads=int(m.group(4)), device=m.group(5))
        elif EPOCH_RE.match(line):
            if not out:
                out.append({"after_epoch": 0, "epochs_done": 0})
            out[-1]["epochs_done"] += 1
    return out


def keep_partial(run: Path, log_text: str, partial: Path) -> None:
    """Copy an unfinished run's checkpoint and its log so far under `partial` (atomically)."""
    partial.mkdir(parents=True, exist_ok=True)
    with atomic_path(partial / "checkpoint.pt", suffix=".pt.tmp") as tmp:
        shutil.copyfile(run / "checkpoint.pt", tmp)
    write_text_atomic(partial / "train.log", log_text)


def keep_finished(run: Path, log_text: str, dest: Path, provenance: dict, partial: Path | None) -> dict:
    """Copy a finished run's outputs (no weights), its whole log and provenance.json to `dest`; remove
    its partial checkpoint. Returns its metrics."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES[1:]:
        write_text_atomic(dest / name, (run / name).read_text())
    write_text_atomic(dest / "train.log", log_text)
    write_json_atomic(dest / "provenance.json", {**provenance, "segments": segments(log_text)})
    metrics = json.loads((run / "metrics.json").read_text())
    write_json_atomic(dest / "metrics.json", metrics)  # last, as in a run folder
    if partial is not None:
        shutil.rmtree(partial, ignore_errors=True)
    return metrics


def rebuild_table(runs_root: Path, results_root: Path, profile: str, params_dir: str | Path = "params") -> str:
    """The table, curves and figures of every run kept under runs_root/PROFILE, beside the paper."""
    from mwnet.config import load_params
    from mwnet.report import with_roots, write_report

    params = with_roots(load_params(params_dir, profile=profile), runs_root, results_root)
    cells, _ = write_report(params)
    return f"{params.report.results_root}/table1.md ({sum(len(c.runs) for c in cells)} runs)"


def plot_progress(runs: dict[str, list[dict]], path: Path, title: str, targets: dict[str, float] | None = None) -> None:
    """Test accuracy per epoch of runs still going (label -> history rows), with each label's paper value
    as a dotted line of the same colour: how far the runs are and where they head."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, rows in sorted(runs.items()):
        line, = ax.plot([r["epoch"] for r in rows], [r["test_acc"] for r in rows], label=label,
                        linestyle="--" if label.endswith(" ce") else "-")
        if targets and label in targets:
            ax.axhline(targets[label], color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%), full test set")
    ax.set_title(title + ("  (dotted: the paper's value)" if targets else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png.tmp") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

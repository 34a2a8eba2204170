"""Long CPU runs kept in the repository across machines: save what they reached, resume it elsewhere.

    python workflow/scripts/reference_runs.py save    [--profile full] [--dest results/reference/full-cpu]
    python workflow/scripts/reference_runs.py restore [--profile full]

save: every run under models_root/PROFILE (params/report.yaml) that finished goes to DEST/runs/PROFILE/
DATASET/CORRUPTION/ARCH/seedS/ (metrics.json, history.csv, weight_curve.csv, train.log with every
segment's log, provenance.json; no weights) and its partial is removed; every unfinished run with a
checkpoint goes to results/reference/partial/DEST_NAME/DATASET/CORRUPTION/ARCH/seedS/ (checkpoint.pt,
train.log, notes.txt), with progress.png beside them (test accuracy per epoch so far, the paper's value). Then DEST/table1.md (csv, tex, figures) is rebuilt beside the paper and DEST/RUN.md lists
each run's machine(s), commit(s), precision, memory format, threads, wall time and resumes. Safe to
repeat: it copies, and a run's train.log is always its earlier segments plus the current one.
restore: copies each committed partial checkpoint back into its run folder (unless the folder holds a
later one), with the earlier segments' log as earlier.log, and prints the command that resumes it.
A run started in the background appends its log to RUN_FOLDER/train.log (never overwrite it), e.g.
    nohup mwnet train --profile full --dataset cifar10 --corruption imbalance_100 --arch 1-100-1 --seed 1 \\
        --threads 1 >> models/full/cifar10/imbalance_100/1-100-1/seed1/train.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mwnet.config import load_params  # noqa: E402
from mwnet.io import write_text_atomic  # noqa: E402
from mwnet.reference import (  # noqa: E402
    keep_finished,
    keep_partial,
    last_epoch,
    plot_progress,
    rebuild_table,
    segments,
    text_of,
)
from mwnet.tracking import git_state  # noqa: E402

EARLIER_LOG = "earlier.log"  # the segments before this machine's, restored from the partial
NOTES = "notes.txt"  # beside a partial checkpoint: what --note said about the run so far


def _notes(partial: Path, note: str) -> list[str]:
    """The notes kept with a run's partial checkpoint, plus `note` when new."""
    notes = [n for n in text_of(partial / NOTES).splitlines() if n.strip()]
    return notes + [note] if note and note not in notes else notes


def _runs(models: Path) -> list[Path]:
    return sorted(p for p in models.glob("*/*/*/seed*") if p.is_dir())


def _machine() -> str:
    import os

    from mwnet.compute import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def save(params, dest: Path, partial_root: Path, note: str, params_dir: str | Path = "params") -> int:
    models = Path(params.report.models_root) / params.profile
    import torch

    from mwnet.report import read_paper_table

    commit, dirty = git_state(REPO)
    paper = read_paper_table(params.report.paper_table)
    going: dict[str, list[dict]] = {}
    targets: dict[str, float] = {}
    for run in _runs(models):
        rel = run.relative_to(models)
        log = text_of(run / EARLIER_LOG) + text_of(run / "train.log")
        partial = partial_root / rel
        notes = _notes(partial, note)  # a note given while the run was unfinished stays with it
        if (run / "metrics.json").is_file():
            m = keep_finished(run, log, dest / "runs" / params.profile / rel,
                              {"saved_at_commit": commit, "saved_on": _machine(), "notes": notes}, partial)
            print(f"finished {rel}: best {m['best_acc']:.2f}, final {m['final_acc']:.2f} -> {dest / 'runs'}")
        elif (run / "checkpoint.pt").is_file():
            keep_partial(run, log, partial)
            label = " ".join(rel.parts[:3])
            going[label] = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["history"]
            if (value := paper.get((rel.parts[2], rel.parts[0], rel.parts[1]))) is not None:
                targets[label] = value
            if notes:
                write_text_atomic(partial / NOTES, "".join(f"{n}\n" for n in notes))
            print(f"unfinished {rel}: {last_epoch(log)} -> {partial}/checkpoint.pt (commit it)")
        else:
            print(f"{rel}: no checkpoint yet ({last_epoch(log)}), nothing to keep")
    if going:
        plot_progress(going, partial_root / "progress.png",
                      f"profile {params.profile}: unfinished runs, saved at commit {commit[:7]}", targets)
        print(f"progress figure: {partial_root / 'progress.png'}")
    finished = sorted((dest / "runs" / params.profile).glob("*/*/*/seed*/metrics.json"))
    if finished:
        print("table: " + rebuild_table(dest / "runs", dest, params.profile, params_dir))
        write_text_atomic(dest / "RUN.md", run_md(params.profile, dest, finished, note))
    return 0


def run_md(profile: str, dest: Path, finished: list[Path], note: str) -> str:
    lines = [f"# Reference runs: profile {profile}, kept with workflow/scripts/reference_runs.py", "",
             "Each run's segments: one per process that trained it (a run resumed from a committed checkpoint",
             "has several). Wall time is training + evaluation over all segments (metrics.json wall_time_s).",
             *([f"", note] if note else []), "",
             "| run | best / final (%) | precision, memory format | threads | wall time (h) | segments: after epoch, epochs, commit, device |",
             "|---|---|---|---|---:|---|"]
    run_notes: list[str] = []
    for mpath in finished:
        m = json.loads(mpath.read_text())
        segs = segments(text_of(mpath.parent / "train.log"))
        where = "; ".join(f"{s['after_epoch']}, {s['epochs_done']}, {s.get('commit', '?')[:12]}, "
                          f"{s.get('device', 'not logged')}" for s in segs) or "not logged"
        rel = mpath.parent.relative_to(dest / "runs" / profile)
        prov = json.loads(text_of(mpath.parent / "provenance.json") or "{}")
        run_notes += [f"- {rel}: {n}" for n in prov.get("notes", []) if n != note]
        lines.append(f"| {rel} | {m['best_acc']:.2f} / {m['final_acc']:.2f} | {m.get('precision', 'fp32')}, "
                     f"{m.get('memory_format', '?')} | {m.get('threads', '?')} | {m['wall_time_s'] / 3600:.2f} | "
                     f"{where} |")
    if run_notes:
        lines += ["", "Notes on single runs:", *run_notes]
    return "\n".join(lines) + "\n"


def restore(params, partial_root: Path) -> int:
    import torch

    models = Path(params.report.models_root) / params.profile
    found = sorted(partial_root.glob("*/*/*/seed*/checkpoint.pt"))
    for ckpt in found:
        rel = ckpt.parent.relative_to(partial_root)
        run = models / rel
        dataset, corruption, arch, seed = *rel.parts[:3], rel.parts[3].removeprefix("seed")
        epoch = torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]
        here = run / "checkpoint.pt"
        if here.is_file() and torch.load(here, map_location="cpu", weights_only=True)["epoch"] >= epoch:
            print(f"{rel}: this machine's checkpoint is as far or further; left as it is")
        else:
            run.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ckpt, here)
            write_text_atomic(run / EARLIER_LOG, text_of(ckpt.parent / "train.log"))
            (run / "train.log").unlink(missing_ok=True)  # its content is in earlier.log now
            print(f"{rel}: checkpoint after epoch {epoch} restored")
        print(f"  resume: nohup mwnet train --profile {params.profile} --dataset {dataset} --corruption "
              f"{corruption} --arch {arch} --seed {seed} --threads 1 >> {run}/train.log 2>&1 &")
    if not found:
        print(f"no partial checkpoint under {partial_root}")
    splits = sorted({(c.parent.relative_to(partial_root).parts[0], c.parent.relative_to(partial_root).parts[1],
                      c.parent.name.removeprefix("seed")) for c in found})
    if splits:  # a run resumes only on its own split (the checkpoint checks the split's md5)
        print("the splits these runs need (deterministic; skip what is there): python workflow/scripts/offline_data.py"
              + "".join(f"; mwnet data fetch --dataset {d}" for d in sorted({d for d, _, _ in splits}))
              + "".join(f"; mwnet data corrupt --dataset {d} --corruption {c} --seed {s}" for d, c, s in splits))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("save", "restore"))
    ap.add_argument("--profile", default="full")
    ap.add_argument("--params", default="params")
    ap.add_argument("--dest", type=Path, default=REPO / "results" / "reference" / "full-cpu",
                    help="where finished runs, the table and RUN.md go (default: results/reference/full-cpu)")
    ap.add_argument("--partial", type=Path, default=None,
                    help="where unfinished runs' checkpoints go (default: results/reference/partial/DEST_NAME)")
    ap.add_argument("--note", default="", help="free text for RUN.md and provenance.json")
    args = ap.parse_args(argv)
    params = load_params(args.params, profile=args.profile)
    partial = args.partial or args.dest.parent / "partial" / args.dest.name
    if args.action == "save":
        return save(params, args.dest, partial, args.note, args.params)
    return restore(params, partial)


if __name__ == "__main__":
    sys.exit(main())

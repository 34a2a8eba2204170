"""`mwnet report`: Table 1 and the figures from the finished runs of the grid.

Reads every run folder of the active profile (paths.run_dir; metrics.json, history.csv,
weight_curve.csv) and writes, each file atomically, under params.report.results_root:

    table1.md, table1.csv, table1.tex   rows: weighting-net shapes (grid order); columns: dataset x corruption.
                                        A cell: reproduced best test accuracy (mean +- std over the seeds
                                        found), the paper's value and the difference. CSV adds final-epoch
                                        accuracy. A cell without a finished run is "—", never a number.
    metrics.json                        the same numbers, nested dataset -> corruption -> shape (dvc metrics)
    curves/DATASET_CORRUPTION.csv       test accuracy per epoch, one column per shape (dvc plots)
    figures/weight_curves.png           learned weight against loss: a panel per dataset x corruption,
                                        a line per shape
    figures/test_accuracy.png           test accuracy against epoch, same layout

A run counts only when its metrics.json exists (the training writes it last) and was made with the
recipe params/ gives now; a run made with another recipe is reported as stale and left out.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mwnet import paths
from mwnet.config import Params, ParamsError, load_params
from mwnet.io import atomic_path, write_json_atomic, write_text_atomic

MISSING = "—"
DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
COMPARABLE_PROFILE = "full"  # the only profile whose recipes are the paper's


# --------------------------------------------------------------------------------------------
# collecting


@dataclass
class Stat:
    mean: float
    std: float | None  # sample std (n-1); None with a single seed

    @classmethod
    def of(cls, values: list[float]) -> "Stat | None":
        if not values:
            return None
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class Cell:
    dataset: str
    corruption: str
    arch: str
    seeds_expected: list[int]
    runs: dict[int, dict] = field(default_factory=dict)  # seed -> metrics.json
    histories: dict[int, list[dict]] = field(default_factory=dict)  # seed -> history rows
    curves: dict[int, list[tuple[float, float]]] = field(default_factory=dict)  # seed -> (loss, weight)
    stale_seeds: list[int] = field(default_factory=list)
    verified: dict[int, bool | None] = field(default_factory=dict)  # seed -> split built on verified raw data
    paper: float | None = None

    @property
    def best(self) -> Stat | None:
        return Stat.of([float(m["best_acc"]) for m in self.runs.values()])

    @property
    def final(self) -> Stat | None:
        return Stat.of([float(m["final_acc"]) for m in self.runs.values()])

    @property
    def unverified(self) -> bool:
        return False in self.verified.values()

    @property
    def verified_text(self) -> str:
        if not self.runs:
            return MISSING
        return "no" if self.unverified else ("yes" if all(self.verified.values()) else "unknown")

    @property
    def diff(self) -> float | None:
        best = self.best
        return None if best is None or self.paper is None else best.mean - self.paper


def read_paper_table(path: str | Path) -> dict[tuple[str, str, str], float]:
    """(arch, dataset, corruption) -> accuracy (%) from the CSV params.report.paper_table names."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise ParamsError(f"report.paper_table = {str(path)!r}: file not found") from None
    need = {"architecture", "dataset", "corruption", "paper_accuracy"}
    if rows and not need <= set(rows[0]):
        raise ParamsError(f"{path}: expected columns {sorted(need)}, found {sorted(rows[0])}")
    return {(r["architecture"], r["dataset"], r["corruption"]): float(r["paper_accuracy"]) for r in rows}


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def raw_verified(params: Params, dataset: str, corruption: str, seed: int, metrics: dict) -> bool | None:
    """Whether the run's split was built from verified raw data (the split's summary.json says, when
    it is the split the run trained on); None when unknown."""
    summary = paths.split_dir(params.data.corrupted_root, dataset, corruption, seed) / paths.SUMMARY_FILE
    if not summary.exists():
        return None
    s = json.loads(summary.read_text())
    if s.get("split_md5") != metrics.get("split_md5"):
        return None
    return s.get("raw_verified")


def collect(params: Params) -> list[Cell]:
    """One Cell per (arch, dataset, corruption) of the grid, in table order, with the runs found."""
    paper = read_paper_table(params.report.paper_table)
    cells = []
    for arch in params.grid.archs:
        for dataset in params.grid.datasets:
            for corruption in params.grid.corruptions:
                cell = Cell(dataset, corruption, arch, list(params.grid.seeds),
                            paper=paper.get((arch, dataset, corruption)))
                recipe = params.recipe_for(corruption).model_dump(mode="json")
                for seed in params.grid.seeds:
                    d = paths.run_dir(params.report.models_root, params.profile, dataset, corruption, arch, seed)
                    if not (d / "metrics.json").exists():
                        continue
                    metrics = json.loads((d / "metrics.json").read_text())
                    if metrics.get("recipe") != recipe:
                        cell.stale_seeds.append(seed)
                        continue
                    cell.runs[seed] = metrics
                    cell.verified[seed] = raw_verified(params, dataset, corruption, seed, metrics)
                    if (d / "history.csv").exists():
                        cell.histories[seed] = _read_csv(d / "history.csv")
                    if (d / "weight_curve.csv").exists():
                        cell.curves[seed] = [(float(r["loss"]), float(r["weight"]))
                                             for r in _read_csv(d / "weight_curve.csv")]
                cells.append(cell)
    return cells


# --------------------------------------------------------------------------------------------
# formatting


def describe_corruption(params: Params, name: str) -> str:
    c = params.corruptions[name]
    if c.kind == "imbalance":
        return f"Imbalance {c.factor:g}"
    if c.kind == "uniform":
        return f"Uniform noise {100 * c.rate:g}%"
    return f"Flip noise {100 * c.rate:g}%" + (" (1 target)" if c.targets == 1 else "")


def _num(x: float | None, d: int, signed: bool = False) -> str:
    if x is None:
        return MISSING
    return f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


def _acc(stat: Stat | None, d: int, pm: str) -> str:
    if stat is None:
        return MISSING
    return _num(stat.mean, d) + ("" if stat.std is None else f"{pm}{_num(stat.std, d)}")


UNVERIFIED_MARK = "†"


def _seed_note(cell: Cell) -> str:
    n, total = len(cell.runs), len(cell.seeds_expected)
    mark = f" {UNVERIFIED_MARK}" if cell.unverified else ""
    return mark + ("" if n in (0, total) else f" [{n}/{total} seeds]")


def _columns(params: Params) -> list[tuple[str, str]]:
    return [(d, c) for d in params.grid.datasets for c in params.grid.corruptions]


def _by_key(cells: list[Cell]) -> dict[tuple[str, str, str], Cell]:
    return {(c.arch, c.dataset, c.corruption): c for c in cells}


def _header_lines(params: Params, cells: list[Cell]) -> list[str]:
    done = sum(len(c.runs) for c in cells)
    expected = sum(len(c.seeds_expected) for c in cells)
    stale = sum(len(c.stale_seeds) for c in cells)
    lines = [f"Profile: {params.profile}. Runs finished: {done} of {expected}."]
    if params.profile != COMPARABLE_PROFILE:
        lines.append(
            f"WARNING: the '{params.profile}' profile changes the recipes (see params/profiles/"
            f"{params.profile}.yaml); its numbers are NOT comparable to the paper's."
        )
    if stale:
        lines.append(f"{stale} run(s) on disk were made with another recipe than params/ gives now and are left out.")
    if any(c.unverified for c in cells):
        lines.append(
            f"{UNVERIFIED_MARK} trained on raw data that is not verified (e.g. the synthetic stand-in for "
            "data not available offline): these numbers say nothing about the method."
        )
    return lines


def render_markdown(params: Params, cells: list[Cell]) -> str:
    d = params.report.decimals
    by = _by_key(cells)
    cols = _columns(params)
    out = ["# Table 1: MW-Net test accuracy (%) by weighting-net shape", ""]
    out += [line if not line.startswith("WARNING") else f"**{line}**" for line in _header_lines(params, cells)]
    out += [
        "",
        "Each cell: reproduced best test accuracy over training (mean ± sample std over seeds when there "
        "are several) (paper's value; difference reproduced − paper). "
        f"{MISSING} = no finished run yet (or no paper value). Final-epoch accuracy: table1.csv.",
        "",
        "| Weighting net | " + " | ".join(
            f"{DATASET_LABELS.get(ds, ds)} {describe_corruption(params, c)}" for ds, c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for arch in params.grid.archs:
        row = [arch]
        for ds, c in cols:
            cell = by[(arch, ds, c)]
            row.append(f"{_acc(cell.best, d, ' ± ')}{_seed_note(cell)} "
                       f"({_num(cell.paper, d)}; {_num(cell.diff, d, signed=True)})")
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


CSV_FIELDS = ("best", "best_std", "final", "final_std", "paper", "diff", "seeds", "raw_verified")


def render_csv(params: Params, cells: list[Cell]) -> str:
    d = params.report.decimals
    by = _by_key(cells)
    cols = _columns(params)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["profile", "architecture"] + [f"{ds}/{c}/{f}" for ds, c in cols for f in CSV_FIELDS])
    for arch in params.grid.archs:
        row = [params.profile, arch]
        for ds, c in cols:
            cell = by[(arch, ds, c)]
            best, final = cell.best, cell.final
            row += [
                _num(best and best.mean, d), _num(best and best.std, d),
                _num(final and final.mean, d), _num(final and final.std, d),
                _num(cell.paper, d), _num(cell.diff, d, signed=True),
                f"{len(cell.runs)}/{len(cell.seeds_expected)}",
                cell.verified_text,
            ]
        w.writerow(row)
    return buf.getvalue()


def _tex_escape(s: str) -> str:
    return s.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def render_latex(params: Params, cells: list[Cell]) -> str:
    d = params.report.decimals
    by = _by_key(cells)
    datasets, corruptions = params.grid.datasets, params.grid.corruptions
    n = len(corruptions)
    head = " & ".join(
        rf"\multicolumn{{{n}}}{{c}}{{{DATASET_LABELS.get(ds, _tex_escape(ds))}}}" for ds in datasets)
    rules = "".join(rf"\cmidrule(lr){{{2 + i * n}-{1 + (i + 1) * n}}}" for i in range(len(datasets)))
    sub = " & ".join(_tex_escape(describe_corruption(params, c)) for _ in datasets for c in corruptions)
    caption = _tex_escape(" ".join(_header_lines(params, cells))).replace(UNVERIFIED_MARK, r"$^\dagger$") + (
        r" Cells: reproduced best test accuracy (\%, mean $\pm$ sample std over seeds), "
        r"the paper's value and the difference in parentheses; --- = no finished run.")
    lines = [
        f"% Generated by `mwnet report` (profile {params.profile}); do not edit.",
        r"\begin{table}[t]",
        r"\centering",
        r"\resizebox{\linewidth}{!}{%",
        r"\begin{tabular}{l" + "c" * (n * len(datasets)) + "}",
        r"\toprule",
        f" & {head} \\\\",
        rules,
        f"Weighting net & {sub} \\\\",
        r"\midrule",
    ]

    def tex_num(x, signed=False):
        s = _num(x, d, signed)
        return "---" if s == MISSING else f"${s}$"

    for arch in params.grid.archs:
        row = [arch]
        for ds in datasets:
            for c in corruptions:
                cell = by[(arch, ds, c)]
                acc = _acc(cell.best, d, r" \pm ")
                acc = "---" if acc == MISSING else f"${acc}$" + (r"$^\dagger$" if cell.unverified else "")
                row.append(f"{acc} ({tex_num(cell.paper)}, {tex_num(cell.diff, signed=True)})")
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", rf"\caption{{{caption}}}",
              r"\label{tab:mwnet-table1}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def metrics_dict(params: Params, cells: list[Cell]) -> dict:
    """Machine-readable table for `dvc metrics show`: null where there is no value."""
    nested: dict = {}
    diffs = []
    for cell in cells:
        best, final = cell.best, cell.final
        nested.setdefault(cell.dataset, {}).setdefault(cell.corruption, {})[cell.arch] = {
            "best": best and best.mean, "best_std": best and best.std,
            "final": final and final.mean, "paper": cell.paper, "diff": cell.diff,
            "seeds": len(cell.runs),
            "raw_verified": {"yes": True, "no": False}.get(cell.verified_text),
        }
        if cell.diff is not None:
            diffs.append(abs(cell.diff))
    return {
        "profile": params.profile,
        "comparable_to_paper": params.profile == COMPARABLE_PROFILE,
        "runs_finished": sum(len(c.runs) for c in cells),
        "runs_expected": sum(len(c.seeds_expected) for c in cells),
        "mean_abs_diff": statistics.fmean(diffs) if diffs else None,
        "cells": nested,
    }


# --------------------------------------------------------------------------------------------
# curves and figures


def _mean_curve(series: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Pointwise mean of curves sampled at the same x (seeds of one cell); truncated to the shortest."""
    n = min(len(s) for s in series)
    return [(series[0][i][0], statistics.fmean(s[i][1] for s in series)) for i in range(n)]


def accuracy_curve(cell: Cell) -> list[tuple[float, float]]:
    series = [[(float(r["epoch"]), float(r["test_acc"])) for r in h] for h in cell.histories.values() if h]
    return _mean_curve(series) if series else []


def weight_curve(cell: Cell) -> list[tuple[float, float]]:
    series = [c for c in cell.curves.values() if c]
    return _mean_curve(series) if series else []


def render_curves_csv(params: Params, cells: list[Cell], dataset: str, corruption: str) -> str | None:
    """Wide CSV: epoch, then test accuracy per shape (mean over seeds; empty where a shape has no run),
    every shape of the grid as a column so that dvc.yaml's plot can name them all. None when no run
    of this dataset and corruption has a history."""
    by = _by_key(cells)
    curves = {a: accuracy_curve(by[(a, dataset, corruption)]) for a in params.grid.archs}
    if not any(curves.values()):
        return None
    epochs = sorted({int(e) for c in curves.values() for e, _ in c})
    lookup = {a: {int(e): v for e, v in c} for a, c in curves.items()}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["epoch"] + list(curves))
    for e in epochs:
        w.writerow([e] + [("" if e not in lookup[a] else f"{lookup[a][e]:.4f}") for a in curves])
    return buf.getvalue()


def _panel_figure(params: Params, cells: list[Cell], curve_fn, xlabel: str, ylabel: str, title: str, path: Path,
                  integer_x: bool = False):
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    by = _by_key(cells)
    rows, cols = params.grid.datasets, params.grid.corruptions
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(4.2 * len(cols), 3.4 * len(rows)),
                             squeeze=False, constrained_layout=True)
    for i, ds in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i][j]
            drawn = False
            for arch in params.grid.archs:
                pts = curve_fn(by[(arch, ds, c)])
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], label=arch, linewidth=1.4)
                    drawn = True
            ax.set_title(f"{DATASET_LABELS.get(ds, ds)}, {describe_corruption(params, c)}", fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if integer_x:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if drawn:
                ax.legend(fontsize=7, title="weighting net", title_fontsize=7)
            else:
                ax.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes,
                        color="grey")
    fig.suptitle(f"{title} (profile {params.profile})")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# entry points


def write_report(params: Params) -> tuple[list[Cell], list[Path]]:
    """Write every table, curve and figure; returns the cells and the paths written."""
    cells = collect(params)
    root = Path(params.report.results_root)
    written = []

    def text(path: Path, content: str):
        write_text_atomic(path, content)
        written.append(path)

    text(root / "table1.md", render_markdown(params, cells))
    text(root / "table1.csv", render_csv(params, cells))
    text(root / "table1.tex", render_latex(params, cells))
    write_json_atomic(root / "metrics.json", metrics_dict(params, cells))
    written.append(root / "metrics.json")
    curves_dir = root / "curves"
    wanted = set()
    for ds in params.grid.datasets:
        for c in params.grid.corruptions:
            content = render_curves_csv(params, cells, ds, c)
            if content is not None:
                wanted.add(f"{ds}_{c}.csv")
                text(curves_dir / f"{ds}_{c}.csv", content)
    # curves of cells that are no longer in the grid (or have no run now) would mislead: remove them
    if curves_dir.exists():
        for old in curves_dir.glob("*.csv"):
            if old.name not in wanted:
                old.unlink()
    figures = root / "figures"
    _panel_figure(params, cells, weight_curve, "training loss", "learned weight V(loss)",
                  "Learned weighting functions", figures / "weight_curves.png")
    _panel_figure(params, cells, accuracy_curve, "epoch", "test accuracy (%)",
                  "Test accuracy during training", figures / "test_accuracy.png", integer_x=True)
    written += [figures / "weight_curves.png", figures / "test_accuracy.png"]
    for cell in cells:
        if cell.stale_seeds:
            print(f"mwnet report: stale run(s) left out (recipe differs from params/): {cell.dataset} "
                  f"{cell.corruption} {cell.arch} seeds {cell.stale_seeds}", file=sys.stderr)
    return cells, written


def _run(args) -> int:
    params = load_params(args.params, profile=args.profile)
    cells, written = write_report(params)
    done = sum(len(c.runs) for c in cells)
    total = sum(len(c.seeds_expected) for c in cells)
    print(f"mwnet report: profile {params.profile}, {done}/{total} runs; wrote {len(written)} files under "
          f"{params.report.results_root}/")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="write Table 1 (md, csv, tex), metrics.json and figures from the finished runs",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--params", default="params", help="parameter folder (default: params)")
    p.add_argument("--profile", default=None, help="params profile (default: params/run.yaml)")
    p.set_defaults(func=_run)

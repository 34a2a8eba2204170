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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mwnet import paths
from mwnet.config import BASELINE_LABELS, Params, ParamsError, load_params
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
    baseline: "Cell | None" = None  # the column's plain-training cell (CE), for the gain

    @property
    def is_baseline(self) -> bool:
        return self.arch in BASELINE_LABELS

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

    def provenance(self, key: str) -> tuple[str, ...]:
        """What the cell's runs were made with for one PROVENANCE key: every value any process that
        trained one of them had (sorted; "unknown" where a run predates the record)."""
        return tuple(sorted({v for m in self.runs.values() for v in run_provenance(m, key)}))

    def gain(self, which: str = "best") -> float | None:
        """MW-Net minus the column's baseline (mean over seeds), best or final accuracy."""
        if self.baseline is None:
            return None
        mine, base = getattr(self, which), getattr(self.baseline, which)
        return None if mine is None or base is None else mine.mean - base.mean


# What a number depends on besides params/: compared across the cells of a column, listed in table1.csv.
PROVENANCE = {"device": "device", "precision": "precision", "git_commit": "commit", "torch_version": "torch"}
UNKNOWN = "unknown"


def run_provenance(metrics: dict, key: str) -> set[str]:
    """The values of `key` over the processes that trained one run (metrics.json's segments; the
    run's own field for runs from before segments were recorded). Commits are shortened to 12 digits."""
    segments = metrics.get("segments") or [metrics]
    values = {str(seg.get(key) or UNKNOWN) for seg in segments}
    return {v[:12] for v in values} if key == "git_commit" else values


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
    """Whether the run's split was built from verified raw data: metrics.json says (runs since it
    records it), else the split's summary.json, when it is the split the run trained on; None when
    unknown."""
    if isinstance(metrics.get("raw_verified"), bool):
        return metrics["raw_verified"]
    summary = paths.split_dir(params.data.corrupted_root, dataset, corruption, seed) / paths.SUMMARY_FILE
    if not summary.exists():
        return None
    s = json.loads(summary.read_text())
    if s.get("split_md5") != metrics.get("split_md5"):
        return None
    return s.get("raw_verified")


def collect(params: Params) -> list[Cell]:
    """One Cell per trained (row, dataset, corruption) of the grid, in table order, with the runs found.
    Rows are the baselines, then the weighting-net shapes (Grid.rows)."""
    paper = read_paper_table(params.report.paper_table)
    cells = []
    for arch in params.grid.rows():
        for dataset, corruption in params.grid.columns():
            if params.grid.in_grid(dataset, corruption, arch):
                cell = Cell(dataset, corruption, arch, list(params.grid.seeds),
                            paper=paper.get((arch, dataset, corruption)))
                recipe = params.run_recipe(corruption, arch)
                for seed in params.grid.seeds:
                    d = paths.run_dir(params.report.models_root, params.profile, dataset, corruption, arch, seed)
                    if not (d / "metrics.json").exists():
                        continue
                    metrics = json.loads((d / "metrics.json").read_text())
                    made_with = metrics.get("recipe") or {}
                    if {k: made_with.get(k) for k in recipe} != recipe:  # fields the run depends on
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
    baselines = {(c.dataset, c.corruption): c for c in reversed(cells) if c.is_baseline}  # the first one
    for c in cells:
        if not c.is_baseline:
            c.baseline = baselines.get((c.dataset, c.corruption))
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


MIXED_MARK = "‡"


def column_outliers(cells: list[Cell]) -> dict[tuple[str, str, str], list[tuple[str, str, str]]]:
    """Cells whose runs were made with another device, precision, commit or torch version than the
    rest of their column: (arch, dataset, corruption) -> [(label, its values, the others' values)].
    A value the column's other cells agree on more often is the column's; when two values are equally
    common, every cell of the column is marked for that key (the column is mixed)."""
    columns: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        if c.runs:
            columns.setdefault((c.dataset, c.corruption), []).append(c)
    out: dict[tuple[str, str, str], list[tuple[str, str, str]]] = {}
    for members in columns.values():
        for key, label in PROVENANCE.items():
            counts = Counter(c.provenance(key) for c in members).most_common()
            if len(counts) < 2:
                continue
            (top, n), tied = counts[0], counts[1][1] == counts[0][1]
            for c in members:
                if tied or c.provenance(key) != top:
                    others = sorted({v for m in members if m is not c for v in m.provenance(key)})
                    out.setdefault((c.arch, c.dataset, c.corruption), []).append(
                        (label, "+".join(c.provenance(key)), "+".join(others)))
    return out


def commits_used(cells: list[Cell]) -> list[tuple[str, int, bool]]:
    """(commit, number of runs it trained part or all of, whether with uncommitted changes), most
    runs first, ties by commit: which code made the table (the same text on every rebuild)."""
    runs: Counter = Counter()
    dirty: set[str] = set()
    for c in cells:
        for m in c.runs.values():
            segments = m.get("segments") or [m]
            for commit in {str(seg.get("git_commit") or UNKNOWN)[:12] for seg in segments}:
                runs[commit] += 1
            dirty |= {str(seg.get("git_commit"))[:12] for seg in segments if str(seg.get("git_dirty")) == "true"}
    return [(commit, n, commit in dirty) for commit, n in sorted(runs.items(), key=lambda kv: (-kv[1], kv[0]))]


def provenance_lines(params: Params, cells: list[Cell], outliers) -> list[str]:
    """The lines under the table: the commits that trained it, and each marked cell's differences."""
    used = commits_used(cells)
    if not used:
        return []
    listed = ", ".join(f"{commit} ({n} run{'s' if n != 1 else ''}{', uncommitted changes' if dirty else ''})"
                       for commit, n, dirty in used)
    lines = [f"Trained by commit{'s' if len(used) > 1 else ''}: {listed}."]
    if outliers:
        lines.append(f"{MIXED_MARK} runs made differently from the rest of their column:")
        for (arch, ds, c), diffs in outliers.items():
            what = "; ".join(f"{label} {mine} (rest of the column: {others})" for label, mine, others in diffs)
            lines.append(f"- {DATASET_LABELS.get(ds, ds)} {describe_corruption(params, c)}, {_row_label(arch)}: {what}")
    return lines


def _seed_note(cell: Cell, mixed: bool = False) -> str:
    n, total = len(cell.runs), len(cell.seeds_expected)
    mark = f" {UNVERIFIED_MARK}" if cell.unverified else ""
    mark += f" {MIXED_MARK}" if mixed else ""
    return mark + ("" if n in (0, total) else f" [{n}/{total} seeds]")


NOT_IN_GRID = "n/a"  # a row x column the active profile does not train


def _columns(params: Params) -> list[tuple[str, str]]:
    return params.grid.columns()


def _row_label(row: str) -> str:
    return BASELINE_LABELS.get(row, row)


def _by_key(cells: list[Cell]) -> dict[tuple[str, str, str], Cell]:
    return {(c.arch, c.dataset, c.corruption): c for c in cells}


def profile_deviations(params: Params) -> list[str]:
    """What the active profile changes in the recipes the grid uses, against the paper ("full")
    recipes, e.g. "flip: epochs 15 (paper 60)". Empty for the full profile."""
    if params.profile == COMPARABLE_PROFILE:
        return []
    try:
        full = load_params(params.params_dir, profile=COMPARABLE_PROFILE)
    except ParamsError:
        return []

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    lines = []
    for name in dict.fromkeys(params.corruptions[c].recipe for c in params.grid.corruptions):
        if name not in full.recipes:
            lines.append(f"{name}: a recipe the paper profile does not have")
            continue
        mine, paper = flat(params.recipes[name].model_dump(mode="json")), flat(full.recipes[name].model_dump(mode="json"))
        diffs = [f"{k} {mine[k]} (paper {paper.get(k)})" for k in mine if mine[k] != paper.get(k)]
        if diffs:
            lines.append(f"{name}: " + "; ".join(diffs))
    return lines


def _header_lines(params: Params, cells: list[Cell]) -> list[str]:
    done = sum(len(c.runs) for c in cells)
    expected = sum(len(c.seeds_expected) for c in cells)
    stale = sum(len(c.stale_seeds) for c in cells)
    lines = [f"Profile: {params.profile}. Runs finished: {done} of {expected}."]
    if params.profile != COMPARABLE_PROFILE:
        lines.append(
            f"WARNING: profile {params.profile}: NOT comparable to the paper (params/profiles/"
            f"{params.profile}.yaml changes the recipes; deviations below)."
        )
    if stale:
        lines.append(f"{stale} run(s) on disk were made with another recipe than params/ gives now and are left out.")
    if any(c.unverified for c in cells):
        lines.append(
            f"{UNVERIFIED_MARK} trained on raw data that is not verified (e.g. synthetic data, or data a "
            "user accepted with allow_unverified): these numbers say nothing about the method."
        )
    return lines


def _cell_text(cell: Cell | None, d: int, pm: str = " ± ", mixed: bool = False) -> str:
    if cell is None:
        return NOT_IN_GRID
    text = f"{_acc(cell.best, d, pm)}{_seed_note(cell, mixed)}"
    if cell.is_baseline:
        return text
    gain = "" if cell.baseline is None else f"; vs CE {_num(cell.gain(), d, signed=True)}"
    return f"{text} ({_num(cell.paper, d)}; {_num(cell.diff, d, signed=True)}{gain})"


def render_markdown(params: Params, cells: list[Cell]) -> str:
    d = params.report.decimals
    by = _by_key(cells)
    cols = _columns(params)
    out = ["# Table 1: MW-Net test accuracy (%) by weighting-net shape", ""]
    out += [line if not line.startswith("WARNING") else f"**{line}**" for line in _header_lines(params, cells)]
    deviations = profile_deviations(params)
    if deviations:
        out += ["", "Deviations from the paper's protocol in this profile:", ""] + [f"- {x}" for x in deviations]
    baseline_note = (
        f" Row \"{BASELINE_LABELS['ce']}\": plain cross-entropy training with the same data, split, backbone, "
        "optimiser, schedule, augmentation and seed; \"vs CE\" = MW-Net minus that row."
        if "ce" in params.grid.baselines else "")
    out += [
        "",
        "Each cell: reproduced best test accuracy over training (mean ± sample std over seeds when there "
        "are several) (paper's value; difference reproduced − paper"
        + ("; gain over the CE row" if baseline_note else "") + "). "
        f"{MISSING} = no finished run yet (or no paper value); {NOT_IN_GRID} = not in this profile's grid. "
        "Final-epoch accuracy: table1.csv." + baseline_note,
        "",
        "| Weighting net | " + " | ".join(
            f"{DATASET_LABELS.get(ds, ds)} {describe_corruption(params, c)}" for ds, c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    outliers = column_outliers(cells)
    for arch in params.grid.rows():
        row = [_row_label(arch)] + [_cell_text(by.get((arch, ds, c)), d, mixed=(arch, ds, c) in outliers)
                                    for ds, c in cols]
        out.append("| " + " | ".join(row) + " |")
    under = provenance_lines(params, cells, outliers)
    return "\n".join(out + ([""] + under if under else [])) + "\n"


CSV_FIELDS = ("best", "best_std", "final", "final_std", "paper", "diff", "gain_best", "gain_final", "seeds",
              "raw_verified", "time_s", "est_time_s", "precision", "memory_format", "device", "commit", "torch",
              "differs_from_column")


def _values_of(cell: Cell, key: str) -> str:
    """What the cell's runs recorded for `key`, e.g. "fp32" or "bf16+fp32" when seeds differ; empty
    for runs from before the field was recorded."""
    return "+".join(sorted({str(m[key]) for m in cell.runs.values() if m.get(key) is not None}))


def _mean_of(cell: Cell, key: str) -> float | None:
    values = [float(m[key]) for m in cell.runs.values() if m.get(key) is not None]
    return statistics.fmean(values) if values else None


def render_csv(params: Params, cells: list[Cell]) -> str:
    """One row per table row; per column the CSV_FIELDS (gain_*: MW-Net minus the CE row, mean over
    seeds; empty for the baseline row and where either has no run; time_s: measured training +
    evaluation seconds, mean over seeds; est_time_s: what `mwnet plan` estimated for it; precision and
    memory_format: what the runs computed with; device, commit, torch: what trained them, every value
    when the runs or their resumed segments differ, joined by "+"; differs_from_column: which of
    device, precision, commit, torch differ from the rest of the column, the cells table1.md marks).
    n/a: not in the profile's grid."""
    d = params.report.decimals
    by = _by_key(cells)
    cols = _columns(params)
    outliers = column_outliers(cells)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["profile", "architecture"] + [f"{ds}/{c}/{f}" for ds, c in cols for f in CSV_FIELDS])
    for arch in params.grid.rows():
        row = [params.profile, arch]
        for ds, c in cols:
            cell = by.get((arch, ds, c))
            if cell is None:
                row += [NOT_IN_GRID] * len(CSV_FIELDS)
                continue
            best, final = cell.best, cell.final
            row += [
                _num(best and best.mean, d), _num(best and best.std, d),
                _num(final and final.mean, d), _num(final and final.std, d),
                _num(cell.paper, d), _num(cell.diff, d, signed=True),
                "" if cell.is_baseline else _num(cell.gain("best"), d, signed=True),
                "" if cell.is_baseline else _num(cell.gain("final"), d, signed=True),
                f"{len(cell.runs)}/{len(cell.seeds_expected)}",
                cell.verified_text,
                _num(_mean_of(cell, "wall_time_s"), 1), _num(_mean_of(cell, "estimated_wall_time_s"), 1),
                _values_of(cell, "precision"), _values_of(cell, "memory_format"),
                *("+".join(cell.provenance(k)) for k in ("device", "git_commit", "torch_version")),
                "+".join(label for label, _, _ in outliers.get((arch, ds, c), [])),
            ]
        w.writerow(row)
    return buf.getvalue()


def _tex_escape(s: str) -> str:
    return s.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def render_latex(params: Params, cells: list[Cell]) -> str:
    d = params.report.decimals
    by = _by_key(cells)
    cols = _columns(params)
    datasets = list(dict.fromkeys(ds for ds, _ in cols))
    groups = [(ds, [c for dd, c in cols if dd == ds]) for ds in datasets]
    head = " & ".join(
        rf"\multicolumn{{{len(cs)}}}{{c}}{{{DATASET_LABELS.get(ds, _tex_escape(ds))}}}" for ds, cs in groups)
    rules, first = "", 2
    for _, cs in groups:
        rules += rf"\cmidrule(lr){{{first}-{first + len(cs) - 1}}}"
        first += len(cs)
    sub = " & ".join(_tex_escape(describe_corruption(params, c)) for _, c in cols)
    caption = _tex_escape(" ".join(_header_lines(params, cells))).replace(UNVERIFIED_MARK, r"$^\dagger$") + (
        r" Cells: reproduced best test accuracy (\%, mean $\pm$ sample std over seeds), "
        r"the paper's value, the difference and the gain over the CE row in parentheses; --- = no finished "
        r"run; n/a = not in this profile's grid.")

    outliers = column_outliers(cells)
    under = provenance_lines(params, cells, outliers)
    if under:
        caption += " " + _tex_escape(" ".join(line.lstrip("- ") for line in under)).replace(MIXED_MARK, r"$^\ddagger$")

    def tex_num(x, signed=False):
        s = _num(x, d, signed)
        return "---" if s == MISSING else f"${s}$"

    lines = [
        f"% Generated by `mwnet report` (profile {params.profile}); do not edit.",
        r"\begin{table}[t]",
        r"\centering",
        r"\resizebox{\linewidth}{!}{%",
        r"\begin{tabular}{l" + "c" * len(cols) + "}",
        r"\toprule",
        f" & {head} \\\\",
        rules,
        f"Weighting net & {sub} \\\\",
        r"\midrule",
    ]
    for arch in params.grid.rows():
        row = [_tex_escape(_row_label(arch))]
        for ds, c in cols:
            cell = by.get((arch, ds, c))
            if cell is None:
                row.append(NOT_IN_GRID)
                continue
            acc = _acc(cell.best, d, r" \pm ")
            acc = "---" if acc == MISSING else f"${acc}$" + (r"$^\dagger$" if cell.unverified else "")
            acc += r"$^\ddagger$" if (arch, ds, c) in outliers else ""
            if cell.is_baseline:
                row.append(acc)
            else:
                gain = "" if cell.baseline is None else f", {tex_num(cell.gain(), signed=True)}"
                row.append(f"{acc} ({tex_num(cell.paper)}, {tex_num(cell.diff, signed=True)}{gain})")
        lines.append(" & ".join(row) + r" \\")
        if arch in params.grid.baselines and arch == params.grid.rows()[len(params.grid.baselines) - 1]:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}}", rf"\caption{{{caption}}}",
              r"\label{tab:mwnet-table1}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def metrics_dict(params: Params, cells: list[Cell]) -> dict:
    """Machine-readable table for `dvc metrics show`: null where there is no value."""
    nested: dict = {}
    diffs = []
    for cell in cells:
        best, final = cell.best, cell.final
        entry = {
            "best": best and best.mean, "best_std": best and best.std,
            "final": final and final.mean, "paper": cell.paper, "diff": cell.diff,
            "seeds": len(cell.runs),
            "raw_verified": {"yes": True, "no": False}.get(cell.verified_text),
        }
        if not cell.is_baseline and cell.baseline is not None:
            entry["gain_vs_ce_best"], entry["gain_vs_ce_final"] = cell.gain("best"), cell.gain("final")
        nested.setdefault(cell.dataset, {}).setdefault(cell.corruption, {})[cell.arch] = entry
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


def group_weight_curves(cell: Cell) -> dict[str, list[tuple[float, float]]]:
    """Mean unnormalised weight per epoch of samples with a clean / a corrupted label (mean over seeds);
    empty when the history has no such columns or no corrupted label."""
    out = {}
    for group in ("clean", "noisy"):
        key = f"mean_weight_{group}"
        series = [[(float(r["epoch"]), float(r[key])) for r in h if r.get(key)] for h in cell.histories.values()]
        series = [x for x in series if x]
        if series:
            out[group] = _mean_curve(series)
    return out if "noisy" in out else {}


def render_curves_csv(params: Params, cells: list[Cell], dataset: str, corruption: str) -> str | None:
    """Wide CSV: epoch, then test accuracy per shape and per baseline (mean over seeds; empty where it
    has no run), every shape of the grid as a column so that dvc.yaml's plot can name them all. None
    when no run of this dataset and corruption has a history."""
    by = _by_key(cells)
    rows = list(params.grid.archs) + list(params.grid.baselines)
    curves = {a: accuracy_curve(by[(a, dataset, corruption)]) if (a, dataset, corruption) in by else []
              for a in rows}
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


def _panels(params: Params, title: str, path: Path, draw, xlabel: str, ylabel: str, integer_x: bool = False,
            columns: list[tuple[str, str]] | None = None):
    """A panel per (dataset, corruption) column of the table (rows: datasets, columns: corruptions);
    draw(ax, dataset, corruption) plots into a panel and returns whether it drew anything."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols_used = columns if columns is not None else params.grid.columns()
    datasets = [d for d in params.grid.datasets if any(dd == d for dd, _ in cols_used)]
    corruptions = [c for c in params.grid.corruptions if any(cc == c for _, cc in cols_used)]
    fig, axes = plt.subplots(max(1, len(datasets)), max(1, len(corruptions)),
                             figsize=(4.2 * max(1, len(corruptions)), 3.4 * max(1, len(datasets))),
                             squeeze=False, constrained_layout=True)
    for i, ds in enumerate(datasets):
        for j, c in enumerate(corruptions):
            ax = axes[i][j]
            ax.set_title(f"{DATASET_LABELS.get(ds, ds)}, {describe_corruption(params, c)}", fontsize=10)
            if (ds, c) not in cols_used:
                ax.text(0.5, 0.5, "not in this profile's grid", ha="center", va="center",
                        transform=ax.transAxes, color="grey")
                ax.set_axis_off()
                continue
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if integer_x:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if draw(ax, ds, c):
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes,
                        color="grey")
    if not datasets:
        axes[0][0].text(0.5, 0.5, "no panel", ha="center", va="center")
    fig.suptitle(f"{title} (profile {params.profile})")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _plot(ax, pts, **kw) -> bool:
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], **kw)
    return bool(pts)


def write_figures(params: Params, cells: list[Cell], figures: Path) -> list[Path]:
    """weight_curves.png (learned V(loss) per shape), test_accuracy.png (per shape, and the CE
    baseline dashed), weight_groups.png (mean weight of clean vs corrupted samples per epoch; noise
    columns only)."""
    by = _by_key(cells)
    shapes = [a for a in params.grid.rows() if a not in params.grid.baselines]

    def weights(ax, ds, c):
        drawn = [_plot(ax, weight_curve(by[(a, ds, c)]), label=a, linewidth=1.4) for a in shapes if (a, ds, c) in by]
        return any(drawn)

    def accuracy(ax, ds, c):
        drawn = [_plot(ax, accuracy_curve(by[(b, ds, c)]), label=_row_label(b), color="black", linestyle="--",
                       linewidth=1.4) for b in params.grid.baselines if (b, ds, c) in by]
        drawn += [_plot(ax, accuracy_curve(by[(a, ds, c)]), label=a, linewidth=1.4) for a in shapes if (a, ds, c) in by]
        return any(drawn)

    def groups(ax, ds, c):
        drawn = False
        for k, a in enumerate(a for a in shapes if (a, ds, c) in by):
            g = group_weight_curves(by[(a, ds, c)])
            color = f"C{k}"
            drawn |= _plot(ax, g.get("clean"), label=f"{a} clean labels", color=color, linewidth=1.4)
            drawn |= _plot(ax, g.get("noisy"), label=f"{a} corrupted labels", color=color, linestyle=":",
                           linewidth=1.6)
        return drawn

    out = [figures / "weight_curves.png", figures / "test_accuracy.png", figures / "weight_groups.png"]
    _panels(params, "Learned weighting functions", out[0], weights, "training loss", "learned weight V(loss)")
    _panels(params, "Test accuracy during training", out[1], accuracy, "epoch", "test accuracy (%)", integer_x=True)
    noise_cols = [(d, c) for d, c in params.grid.columns() if params.corruptions[c].kind != "imbalance"]
    _panels(params, "Mean weight of training samples by label (clean vs corrupted)", out[2], groups, "epoch",
            "mean weight V(loss)", integer_x=True, columns=noise_cols)
    return out


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
    for ds, c in params.grid.columns():
        content = render_curves_csv(params, cells, ds, c)
        if content is not None:
            wanted.add(f"{ds}_{c}.csv")
            text(curves_dir / f"{ds}_{c}.csv", content)
    # curves of cells that are no longer in the grid (or have no run now) would mislead: remove them
    if curves_dir.exists():
        for old in curves_dir.glob("*.csv"):
            if old.name not in wanted:
                old.unlink()
    written += write_figures(params, cells, root / "figures")
    for cell in cells:
        if cell.stale_seeds:
            print(f"mwnet report: stale run(s) left out (recipe differs from params/): {cell.dataset} "
                  f"{cell.corruption} {cell.arch} seeds {cell.stale_seeds}", file=sys.stderr)
    return cells, written


def report_metrics(cells: list[Cell]) -> dict[str, float | None]:
    """Per-cell numbers for the report's MLflow run: DATASET/CORRUPTION/ROW/best|final|gain_best."""
    out = {}
    for c in cells:
        key = f"{c.dataset}/{c.corruption}/{c.arch}"
        out[f"{key}/best"] = c.best and c.best.mean
        out[f"{key}/final"] = c.final and c.final.mean
        if not c.is_baseline:
            out[f"{key}/gain_best"] = c.gain("best")
    return out


def track_report(params: Params, cells: list[Cell], written: list[Path]) -> str:
    from mwnet.tracking import experiment_name, git_state, log_report_run, resolve_tracking_uri, source_tags

    commit, dirty = git_state(Path(__file__).resolve().parent)
    return log_report_run(
        resolve_tracking_uri(params.tracking.tracking_uri),
        experiment_name(params.tracking.experiment, params.profile), params.profile, written,
        report_metrics(cells),
        {**source_tags("mwnet report", commit), "git_commit": commit, "git_dirty": dirty, "profile": params.profile,
         "runs_finished": str(sum(len(c.runs) for c in cells)),
         "trained_by_commits": " ".join(commit for commit, _, _ in commits_used(cells))[:5000]},
    )


def with_roots(params: Params, models_root=None, results_root=None) -> Params:
    """params whose report reads runs from models_root and writes under results_root (when given)."""
    update = {k: str(v) for k, v in (("models_root", models_root), ("results_root", results_root)) if v}
    return params.model_copy(update={"report": params.report.model_copy(update=update)}) if update else params


def _run(args) -> int:
    params = with_roots(load_params(args.params, profile=args.profile), args.models_root, args.results_root)
    cells, written = write_report(params)
    done = sum(len(c.runs) for c in cells)
    total = sum(len(c.seeds_expected) for c in cells)
    print(f"mwnet report: profile {params.profile}, {done}/{total} runs; wrote {len(written)} files under "
          f"{params.report.results_root}/")
    if not args.no_tracking:
        run_id = track_report(params, cells, written)
        print(f"mwnet report: logged to MLflow as run report/{params.profile} ({run_id})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="write Table 1 (md, csv, tex), metrics.json and figures from the finished runs",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--params", default="params", help="parameter folder (default: params)")
    p.add_argument("--profile", default=None, help="params profile (default: params/run.yaml)")
    p.add_argument("--no-tracking", action="store_true", help="do not log the report to MLflow")
    p.add_argument("--models-root", default=None,
                   help="read runs from here instead of params/report.yaml's models_root (e.g. a reference "
                        "folder: DIR/PROFILE/DATASET/CORRUPTION/ARCH/seedS/metrics.json)")
    p.add_argument("--results-root", default=None, help="write here instead of params/report.yaml's results_root")
    p.set_defaults(func=_run)

"""mwnet report on synthetic run folders written by the tests: values, mean +- std, missing cells, paper diff."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from mwnet import paths
from mwnet.cli import main
from mwnet.config import load_params
from mwnet.report import collect, metrics_dict, render_csv, render_latex, render_markdown, write_report

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with params/ (repo copy, grid seeds 1 and 2) and the paper table; cwd for relative paths."""
    shutil.copytree(REPO / "params", tmp_path / "params", ignore=shutil.ignore_patterns("local.yaml"))
    (tmp_path / "workflow").mkdir()
    shutil.copy(REPO / "workflow" / "paper_table1.csv", tmp_path / "workflow" / "paper_table1.csv")
    grid = yaml.safe_load((tmp_path / "params" / "grid.yaml").read_text())
    grid["seeds"] = [1, 2]
    (tmp_path / "params" / "grid.yaml").write_text(yaml.safe_dump(grid))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fake_run(params, dataset, corruption, arch, seed, best, final, *, recipe=None, epochs=3, **extra):
    d = paths.run_dir(params.report.models_root, params.profile, dataset, corruption, arch, seed)
    d.mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": e, "test_acc": final - (epochs - e)} for e in range(1, epochs + 1)]
    with open(d / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["epoch", "lr", "train_loss", "train_acc", "meta_loss", "mean_weight", "test_loss", "test_acc",
                               "epoch_time_s", "images_per_s"], extrasaction="ignore", restval=0)
        w.writeheader()
        w.writerows(rows)
    (d / "weight_curve.csv").write_text("loss,weight\n0.0,0.5\n5.0,0.4\n10.0,0.3\n")
    metrics = {
        "best_acc": best, "final_acc": final, "best_epoch": 2, "epochs": epochs, "wall_time_s": 1.0,
        "images_per_s": 10.0, "device": "cpu", "dataset": dataset, "corruption": corruption, "arch": arch,
        "seed": seed, "profile": params.profile, "split_md5": "x", "mlflow_run_id": None,
        "recipe": recipe if recipe is not None else params.recipe_for(corruption).model_dump(mode="json"),
        **extra,
    }
    (d / "metrics.json").write_text(json.dumps(metrics))


def md_cell(md: str, arch: str, col: int) -> str:
    """Text of table row `arch`, data column `col` (0-based) in table1.md."""
    for line in md.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if parts[0] == arch:
            return parts[1 + col]
    raise AssertionError(f"no row {arch}")


def test_mean_std_paper_and_diff(workdir):
    p = load_params("params")
    fake_run(p, "cifar10", "imbalance_100", "1-50-1", 1, best=74.0, final=73.0)
    fake_run(p, "cifar10", "imbalance_100", "1-50-1", 2, best=76.0, final=70.0)
    cells = collect(p)
    md = render_markdown(p, cells)
    # paper 73.50 for 1-50-1 / cifar10 / imbalance_100; mean 75, sample std sqrt(2) = 1.41
    assert md_cell(md, "1-50-1", 0) == "75.00 ± 1.41 (73.50; +1.50; vs CE —)"
    rows = list(csv.DictReader(render_csv(p, cells).splitlines()))
    assert [r["architecture"] for r in rows] == ["ce"] + p.grid.archs
    r = rows[1]
    assert (r["cifar10/imbalance_100/best"], r["cifar10/imbalance_100/best_std"]) == ("75.00", "1.41")
    assert (r["cifar10/imbalance_100/final"], r["cifar10/imbalance_100/final_std"]) == ("71.50", "2.12")
    assert (r["cifar10/imbalance_100/paper"], r["cifar10/imbalance_100/diff"]) == ("73.50", "+1.50")
    assert r["cifar10/imbalance_100/seeds"] == "2/2"
    assert r["profile"] == "full"


def test_csv_says_what_precision_and_memory_format_ran(workdir):
    p = load_params("params")
    fake_run(p, "cifar10", "imbalance_100", "ce", 1, best=70.0, final=70.0, precision="fp32",
             memory_format="channels_last")
    fake_run(p, "cifar10", "imbalance_100", "1-50-1", 1, best=74.0, final=73.0, precision="bf16",
             memory_format="channels_last")
    fake_run(p, "cifar10", "imbalance_100", "1-50-1", 2, best=76.0, final=70.0, precision="fp32",
             memory_format="contiguous")
    fake_run(p, "cifar10", "flip_40", "1-50-1", 1, best=76.0, final=70.0)  # recorded before the field existed
    r = {row["architecture"]: row for row in csv.DictReader(render_csv(p, collect(p)).splitlines())}
    col = "cifar10/imbalance_100"
    assert (r["ce"][f"{col}/precision"], r["ce"][f"{col}/memory_format"]) == ("fp32", "channels_last")
    assert (r["1-50-1"][f"{col}/precision"], r["1-50-1"][f"{col}/memory_format"]) == (
        "bf16+fp32", "channels_last+contiguous")  # seeds that differ are never hidden
    assert r["1-50-1"]["cifar10/flip_40/precision"] == ""


def test_single_seed_has_no_std_and_partial_seeds_are_marked(workdir):
    p = load_params("params")
    fake_run(p, "cifar100", "flip_40", "1-10-10-10-1", 2, best=60.0, final=59.5)
    md = render_markdown(p, collect(p))
    # columns: cifar10 x 3 corruptions, then cifar100 imbalance, uniform, flip -> index 5; paper 57.29
    assert md_cell(md, "1-10-10-10-1", 5) == "60.00 [1/2 seeds] (57.29; +2.71; vs CE —)"


def test_missing_cells_are_dashes_never_numbers(workdir):
    p = load_params("params")
    fake_run(p, "cifar10", "uniform_40", "1-100-1", 1, best=88.0, final=87.0)
    cells = collect(p)
    md = render_markdown(p, cells)
    assert md_cell(md, "1-100-1", 1).startswith("88.00 ")
    assert md_cell(md, "1-50-1", 0) == "— (73.50; —; vs CE —)"  # paper value shown, no reproduced number, no diff
    rows = list(csv.DictReader(render_csv(p, cells).splitlines()))
    missing = rows[0]
    for f in ("best", "best_std", "final", "final_std", "diff"):
        assert missing[f"cifar10/imbalance_100/{f}"] == "—"
    assert missing["cifar10/imbalance_100/seeds"] == "0/2"
    tex = render_latex(p, cells)
    assert "--- ($73.50$, ---, ---)" in tex and r"\begin{tabular}" in tex


def test_stale_run_is_left_out(workdir, capsys):
    p = load_params("params")
    other = p.recipe_for("flip_40").model_dump(mode="json") | {"epochs": 1}
    fake_run(p, "cifar10", "flip_40", "1-200-1", 1, best=90.0, final=90.0, recipe=other)
    cells, _ = write_report(p)
    md = Path("results/table1.md").read_text()
    assert md_cell(md, "1-200-1", 2).startswith("— ")
    assert "1 run(s) on disk were made with another recipe" in md
    assert "stale" in capsys.readouterr().err


def test_unknown_paper_value_is_a_dash(workdir):
    corr = yaml.safe_load(Path("params/corruptions.yaml").read_text())
    corr["uniform_60"] = dict(corr["uniform_40"], rate=0.6)
    Path("params/corruptions.yaml").write_text(yaml.safe_dump(corr))
    grid = yaml.safe_load(Path("params/grid.yaml").read_text())
    grid["corruptions"].append("uniform_60")
    Path("params/grid.yaml").write_text(yaml.safe_dump(grid))
    p = load_params("params")
    fake_run(p, "cifar10", "uniform_60", "1-50-1", 1, best=80.0, final=80.0)
    md = render_markdown(p, collect(p))
    assert md_cell(md, "1-50-1", 3) == "80.00 [1/2 seeds] (—; —; vs CE —)"
    assert "Uniform noise 60%" in md


def test_cli_writes_everything_with_profile_header(workdir):
    p = load_params("params", profile="quick")
    for arch in p.grid.archs[:2]:
        fake_run(p, "cifar10", "imbalance_100", arch, 1, best=50.0, final=48.0)
    assert main(["report", "--profile", "quick", "--no-tracking"]) == 0
    res = Path("results")
    md = (res / "table1.md").read_text()
    assert "Profile: quick" in md and "NOT comparable" in md
    assert "quick" in (res / "table1.tex").read_text()
    m = json.loads((res / "metrics.json").read_text())
    assert m["profile"] == "quick" and m["comparable_to_paper"] is False
    assert (m["runs_finished"], m["runs_expected"]) == (2, 84)  # 2 seeds x (36 MW-Net cells + 6 CE runs)
    c = m["cells"]["cifar10"]["imbalance_100"]
    assert c["1-50-1"]["best"] == 50.0 and c["1-50-1"]["paper"] == 73.5 and c["1-50-1"]["diff"] == -23.5
    assert c["1-200-1"]["best"] is None and c["1-200-1"]["diff"] is None
    curves = list(csv.DictReader((res / "curves" / "cifar10_imbalance_100.csv").read_text().splitlines()))
    assert list(curves[0]) == ["epoch"] + p.grid.archs + ["ce"] and len(curves) == 3  # every shape: dvc.yaml names them
    assert float(curves[-1]["1-50-1"]) == 48.0 and curves[-1]["1-200-1"] == ""
    assert not (res / "curves" / "cifar100_flip_40.csv").exists()  # no run: no curve file
    for fig in ("weight_curves.png", "test_accuracy.png", "weight_groups.png"):
        assert (res / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [f for f in res.rglob(".*")], "temporary files left behind"
    # the full profile has no runs here: every reproduced value is missing, and no warning
    assert main(["report", "--no-tracking"]) == 0
    md = (res / "table1.md").read_text()
    assert "NOT comparable" not in md and "Runs finished: 0 of 84" in md


def test_runs_on_unverified_raw_data_are_marked(workdir):
    p = load_params("params")
    for seed in (1, 2):
        fake_run(p, "cifar100", "uniform_40", "1-100-1", seed, best=60.0, final=60.0)
        split = paths.split_dir(p.data.corrupted_root, "cifar100", "uniform_40", seed)
        split.mkdir(parents=True)
        # the split the run trained on (same split_md5), built from synthetic data
        (split / paths.SUMMARY_FILE).write_text(json.dumps({"split_md5": "x", "raw_verified": seed == 1}))
    fake_run(p, "cifar10", "uniform_40", "1-100-1", 1, best=88.0, final=88.0)
    cells = collect(p)
    md = render_markdown(p, cells)
    assert md_cell(md, "1-100-1", 4) == "60.00 ± 0.00 † (67.73; -7.73; vs CE —)"
    assert md_cell(md, "1-100-1", 1) == "88.00 [1/2 seeds] (89.27; -1.27; vs CE —)"  # no summary: not marked
    assert "† trained on raw data that is not verified" in md
    row = list(csv.DictReader(render_csv(p, cells).splitlines()))[2]  # rows: ce, 1-50-1, 1-100-1
    assert row["cifar100/uniform_40/raw_verified"] == "no" and row["cifar10/uniform_40/raw_verified"] == "unknown"
    assert row["cifar10/imbalance_100/raw_verified"] == "—"
    assert r"$60.00 \pm 0.00$$^\dagger$" in render_latex(p, cells)


def test_ce_row_first_and_gain_over_it(workdir):
    """The baseline row leads the table; each MW-Net cell shows its gain over the CE run of its
    column (mean over seeds), in md, csv and metrics.json; the baseline row has no paper value."""
    p = load_params("params")
    for seed, (b, f) in {1: (70.0, 69.0), 2: (72.0, 70.0)}.items():
        fake_run(p, "cifar10", "flip_40", "ce", seed, best=b, final=f)
    fake_run(p, "cifar10", "flip_40", "1-100-1", 1, best=80.0, final=78.0)
    fake_run(p, "cifar10", "flip_40", "1-100-1", 2, best=82.0, final=79.0)
    cells = collect(p)
    md = render_markdown(p, cells)
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[:2] == ["Weighting net", "CE, same schedule"] and rows[2:] == p.grid.archs
    assert md_cell(md, "CE, same schedule", 2) == "71.00 ± 1.41"
    assert md_cell(md, "1-100-1", 2) == "81.00 ± 1.41 (87.54; -6.54; vs CE +10.00)"
    r = {row["architecture"]: row for row in csv.DictReader(render_csv(p, cells).splitlines())}
    assert (r["1-100-1"]["cifar10/flip_40/gain_best"], r["1-100-1"]["cifar10/flip_40/gain_final"]) == ("+10.00", "+9.00")
    assert r["ce"]["cifar10/flip_40/gain_best"] == "" and r["ce"]["cifar10/flip_40/paper"] == "—"
    m = metrics_dict(p, cells)["cells"]["cifar10"]["flip_40"]
    assert m["1-100-1"]["gain_vs_ce_best"] == 10.0 and m["1-100-1"]["gain_vs_ce_final"] == 9.0
    assert "gain_vs_ce_best" not in m["ce"]
    assert "vs CE —" in md_cell(md, "1-100-1", 0)  # no CE run in that column yet: no gain


def test_select_narrows_the_grid_and_the_table(workdir):
    """A profile's select: only the chosen cells train, CE runs in every chosen column, and the table
    has only those columns and rows; other cells of a shown column are n/a, never a number."""
    Path("params/profiles/narrow.yaml").write_text(yaml.safe_dump({"grid": {"select": [
        {"datasets": ["cifar10"], "corruptions": ["flip_40", "uniform_40"], "archs": ["1-100-1"]},
        {"datasets": ["cifar10"], "corruptions": ["flip_40"], "archs": ["1-10-10-10-1"]},
    ]}}))
    p = load_params("params", profile="narrow")
    assert p.grid.columns() == [("cifar10", "uniform_40"), ("cifar10", "flip_40")]
    assert p.grid.rows() == ["ce", "1-100-1", "1-10-10-10-1"]
    assert sorted({(c, a) for _, c, a, _ in p.cells()}) == sorted(
        [(c, a) for c in ("uniform_40", "flip_40") for a in ("ce", "1-100-1")] + [("flip_40", "1-10-10-10-1")])
    assert len(list(p.cells())) == 5 * 2  # two seeds in this workdir
    md = render_markdown(p, collect(p))
    assert "Uniform noise 40%" in md and "Imbalance" not in md and "CIFAR-100" not in md
    assert md_cell(md, "1-10-10-10-1", 0) == "n/a" and md_cell(md, "1-10-10-10-1", 1).startswith("— ")
    assert "Deviations from the paper" not in md  # the narrowed profile keeps the paper's recipes


def test_select_outside_the_grid_is_refused(workdir):
    from mwnet.config import ParamsError

    Path("params/profiles/bad.yaml").write_text(yaml.safe_dump({"grid": {"select": [
        {"datasets": ["cifar10"], "corruptions": ["flip_40"], "archs": ["1-7-1"]}]}}))
    with pytest.raises(ParamsError, match=r"(?s)grid.yaml.*select.0.archs: \['1-7-1'\] not in the grid's archs"):
        load_params("params", profile="bad")


def test_mini_profile_lists_its_deviations(workdir):
    from mwnet.report import profile_deviations

    p = load_params("params", profile="mini")
    dev = "\n".join(profile_deviations(p))
    assert "uniform: backbone.name resnet (paper wrn)" in dev and "epochs 12 (paper 60)" in dev
    md = render_markdown(p, collect(p))
    assert "NOT comparable to the paper" in md and "- flip: backbone.depth 8 (paper 32)" in md


def test_report_of_a_reference_folder_uses_the_runs_own_raw_verified(workdir):
    """`mwnet report --models-root/--results-root`: the table of runs kept elsewhere (results/reference/gpu),
    with no split folder beside them: metrics.json's raw_verified decides the † mark."""
    from mwnet.report import with_roots

    p = with_roots(load_params("params"), models_root="ref/runs")
    fake_run(p, "cifar10", "imbalance_100", "1-100-1", 1, best=75.0, final=74.5)
    fake_run(p, "cifar10", "flip_40", "1-100-1", 1, best=80.0, final=79.0)
    for corruption, verified in (("imbalance_100", True), ("flip_40", False)):
        f = paths.run_dir("ref/runs", "full", "cifar10", corruption, "1-100-1", 1) / "metrics.json"
        f.write_text(json.dumps(json.loads(f.read_text()) | {"raw_verified": verified}))
    assert main(["report", "--no-tracking", "--models-root", "ref/runs", "--results-root", "ref"]) == 0
    md = Path("ref/table1.md").read_text()
    assert md_cell(md, "1-100-1", 0).startswith("75.00 [1/2 seeds] (75.21") and "†" not in md_cell(md, "1-100-1", 0)
    assert md_cell(md, "1-100-1", 2).startswith("80.00 † [1/2 seeds]")
    assert not Path("results").exists()  # params/report.yaml's results_root untouched


def seg(commit, device="cpu", precision="fp32", torch_version="2.13.0", dirty="false"):
    return {"git_commit": commit, "git_dirty": dirty, "device": device, "precision": precision,
            "torch_version": torch_version}


def test_tables_say_which_code_device_and_precision_made_each_cell(workdir):
    p = load_params("params")
    a, b = "a" * 40, "b" * 40
    col = ("cifar10", "imbalance_100")
    fake_run(p, *col, "ce", 1, best=70.0, final=70.0, **seg(a), segments=[seg(a)])
    fake_run(p, *col, "1-50-1", 1, best=74.0, final=73.0, **seg(a), segments=[seg(a)])
    # trained on a GPU in bf16 by other code: the one cell that differs from its column
    fake_run(p, *col, "1-100-1", 1, best=75.0, final=75.0, **seg(b, "cuda (H200)", "bf16"),
             segments=[seg(b, "cuda (H200)", "bf16")])
    # resumed by another commit, otherwise like the column: its commits are both listed and it is marked
    fake_run(p, *col, "1-200-1", 1, best=75.0, final=75.0, **seg(b), segments=[seg(a), seg(b, dirty="true")])
    cells = collect(p)
    md = render_markdown(p, cells)
    assert md_cell(md, "1-50-1", 0).startswith("74.00 [1/2 seeds] (")  # like the rest of its column: no mark
    assert md_cell(md, "CE, same schedule", 0) == "70.00 [1/2 seeds]"
    assert md_cell(md, "1-100-1", 0).startswith("75.00 ‡ [1/2 seeds] (")
    assert md_cell(md, "1-200-1", 0).startswith("75.00 ‡ [1/2 seeds] (")
    assert f"Trained by commits: {a[:12]} (3 runs), {b[:12]} (2 runs, uncommitted changes)." in md
    assert (f"- CIFAR-10 Imbalance 100, 1-100-1: device cuda (H200) (rest of the column: cpu); precision bf16 "
            f"(rest of the column: fp32); commit {b[:12]} (rest of the column: {a[:12]}+{b[:12]})") in md
    assert f"- CIFAR-10 Imbalance 100, 1-200-1: commit {a[:12]}+{b[:12]} (rest of the column: {a[:12]}+{b[:12]})" in md
    rows = {r["architecture"]: r for r in csv.DictReader(render_csv(p, cells).splitlines())}
    k = "cifar10/imbalance_100/"
    assert (rows["1-100-1"][k + "device"], rows["1-100-1"][k + "precision"], rows["1-100-1"][k + "commit"],
            rows["1-100-1"][k + "torch"]) == ("cuda (H200)", "bf16", b[:12], "2.13.0")
    assert rows["1-100-1"][k + "differs_from_column"] == "device+precision+commit"
    assert rows["1-200-1"][k + "commit"] == f"{a[:12]}+{b[:12]}"
    assert rows["1-50-1"][k + "differs_from_column"] == ""
    tex = render_latex(p, cells)
    assert r"$75.00$$^\ddagger$" in tex and r"$74.00$$^\ddagger$" not in tex


def test_commits_are_listed_in_the_same_order_on_every_rebuild(workdir):
    """Equal run counts are ordered by commit, not by set or hash order (which changes between processes):
    a rebuilt table is byte-identical, so DVC and git see no change."""
    p = load_params("params")
    commits = [c * 40 for c in "fdbeac"]
    fake_run(p, "cifar10", "imbalance_100", "ce", 1, best=70.0, final=70.0, **seg(commits[-1]),
             segments=[seg(c) for c in commits])
    fake_run(p, "cifar10", "imbalance_100", "1-50-1", 1, best=74.0, final=73.0, **seg("z" * 40),
             segments=[seg("z" * 40)])
    md = render_markdown(p, collect(p))
    listed = ", ".join(f"{c * 12} (1 run)" for c in "abcdefz")
    assert f"Trained by commits: {listed}." in md


def test_runs_from_before_provenance_was_recorded_are_unknown_not_guessed(workdir):
    p = load_params("params")
    fake_run(p, "cifar10", "imbalance_100", "ce", 1, best=70.0, final=70.0)  # no commit, no segments
    fake_run(p, "cifar10", "imbalance_100", "1-50-1", 1, best=74.0, final=73.0)
    cells = collect(p)
    md = render_markdown(p, cells)
    assert "Trained by commit: unknown (2 runs)." in md and "‡" not in md
    rows = {r["architecture"]: r for r in csv.DictReader(render_csv(p, cells).splitlines())}
    assert rows["ce"]["cifar10/imbalance_100/commit"] == "unknown"
    assert rows["ce"]["cifar10/imbalance_100/device"] == "cpu"  # recorded by every run


def test_two_equally_common_devices_mark_the_whole_column(workdir):
    p = load_params("params")
    fake_run(p, "cifar10", "imbalance_100", "ce", 1, best=70.0, final=70.0, device="cpu")
    fake_run(p, "cifar10", "imbalance_100", "1-50-1", 1, best=74.0, final=73.0, device="cuda (H200)")
    md = render_markdown(p, collect(p))
    assert md_cell(md, "CE, same schedule", 0) == "70.00 ‡ [1/2 seeds]"
    assert md_cell(md, "1-50-1", 0).startswith("74.00 ‡ [1/2 seeds] (")

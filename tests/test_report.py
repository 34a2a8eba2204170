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
from mwnet.report import collect, render_csv, render_latex, render_markdown, write_report

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


def fake_run(params, dataset, corruption, arch, seed, best, final, *, recipe=None, epochs=3):
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
    assert md_cell(md, "1-50-1", 0) == "75.00 ± 1.41 (73.50; +1.50)"
    rows = list(csv.DictReader(render_csv(p, cells).splitlines()))
    assert [r["architecture"] for r in rows] == p.grid.archs
    r = rows[0]
    assert (r["cifar10/imbalance_100/best"], r["cifar10/imbalance_100/best_std"]) == ("75.00", "1.41")
    assert (r["cifar10/imbalance_100/final"], r["cifar10/imbalance_100/final_std"]) == ("71.50", "2.12")
    assert (r["cifar10/imbalance_100/paper"], r["cifar10/imbalance_100/diff"]) == ("73.50", "+1.50")
    assert r["cifar10/imbalance_100/seeds"] == "2/2"
    assert r["profile"] == "full"


def test_single_seed_has_no_std_and_partial_seeds_are_marked(workdir):
    p = load_params("params")
    fake_run(p, "cifar100", "flip_40", "1-10-10-10-1", 2, best=60.0, final=59.5)
    md = render_markdown(p, collect(p))
    # columns: cifar10 x 3 corruptions, then cifar100 imbalance, uniform, flip -> index 5; paper 57.29
    assert md_cell(md, "1-10-10-10-1", 5) == "60.00 [1/2 seeds] (57.29; +2.71)"


def test_missing_cells_are_dashes_never_numbers(workdir):
    p = load_params("params")
    fake_run(p, "cifar10", "uniform_40", "1-100-1", 1, best=88.0, final=87.0)
    cells = collect(p)
    md = render_markdown(p, cells)
    assert md_cell(md, "1-100-1", 1).startswith("88.00 ")
    assert md_cell(md, "1-50-1", 0) == "— (73.50; —)"  # paper value shown, no reproduced number, no diff
    rows = list(csv.DictReader(render_csv(p, cells).splitlines()))
    missing = rows[0]
    for f in ("best", "best_std", "final", "final_std", "diff"):
        assert missing[f"cifar10/imbalance_100/{f}"] == "—"
    assert missing["cifar10/imbalance_100/seeds"] == "0/2"
    tex = render_latex(p, cells)
    assert "--- ($73.50$, ---)" in tex and r"\begin{tabular}" in tex


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
    assert md_cell(md, "1-50-1", 3) == "80.00 [1/2 seeds] (—; —)"
    assert "Uniform noise 60%" in md


def test_cli_writes_everything_with_profile_header(workdir):
    p = load_params("params", profile="quick")
    for arch in p.grid.archs[:2]:
        fake_run(p, "cifar10", "imbalance_100", arch, 1, best=50.0, final=48.0)
    assert main(["report", "--profile", "quick"]) == 0
    res = Path("results")
    md = (res / "table1.md").read_text()
    assert "Profile: quick" in md and "NOT comparable" in md
    assert "quick" in (res / "table1.tex").read_text()
    m = json.loads((res / "metrics.json").read_text())
    assert m["profile"] == "quick" and m["comparable_to_paper"] is False
    assert (m["runs_finished"], m["runs_expected"]) == (2, 72)
    c = m["cells"]["cifar10"]["imbalance_100"]
    assert c["1-50-1"]["best"] == 50.0 and c["1-50-1"]["paper"] == 73.5 and c["1-50-1"]["diff"] == -23.5
    assert c["1-200-1"]["best"] is None and c["1-200-1"]["diff"] is None
    curves = list(csv.DictReader((res / "curves" / "cifar10_imbalance_100.csv").read_text().splitlines()))
    assert list(curves[0]) == ["epoch"] + p.grid.archs and len(curves) == 3  # every shape: dvc.yaml names them
    assert float(curves[-1]["1-50-1"]) == 48.0 and curves[-1]["1-200-1"] == ""
    assert not (res / "curves" / "cifar100_flip_40.csv").exists()  # no run: no curve file
    for fig in ("weight_curves.png", "test_accuracy.png"):
        assert (res / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [f for f in res.rglob(".*")], "temporary files left behind"
    # the full profile has no runs here: every reproduced value is missing, and no warning
    assert main(["report"]) == 0
    md = (res / "table1.md").read_text()
    assert "NOT comparable" not in md and "Runs finished: 0 of 72" in md


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
    assert md_cell(md, "1-100-1", 4) == "60.00 ± 0.00 † (67.73; -7.73)"
    assert md_cell(md, "1-100-1", 1) == "88.00 [1/2 seeds] (89.27; -1.27)"  # no summary: not marked
    assert "† trained on raw data that is not verified" in md
    row = list(csv.DictReader(render_csv(p, cells).splitlines()))[1]
    assert row["cifar100/uniform_40/raw_verified"] == "no" and row["cifar10/uniform_40/raw_verified"] == "unknown"
    assert row["cifar10/imbalance_100/raw_verified"] == "—"
    assert r"$60.00 \pm 0.00$$^\dagger$" in render_latex(p, cells)

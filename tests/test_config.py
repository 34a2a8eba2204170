"""params/ validation: the real files load, bad files fail naming file, field, value and what is allowed."""

import shutil
from pathlib import Path

import pytest
import yaml

from mwnet.config import ParamsError, load_params, parse_shape

REPO = Path(__file__).resolve().parents[1]
PAPER_SHAPES = ["1-50-1", "1-100-1", "1-200-1", "1-100-100-1", "1-10-10-1", "1-10-10-10-1"]


@pytest.fixture
def params_dir(tmp_path):
    d = tmp_path / "params"
    shutil.copytree(REPO / "params", d, ignore=shutil.ignore_patterns("local.yaml"))
    return d


def edit(path: Path, fn):
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data))


def test_repo_params_are_the_paper_protocol(params_dir):
    p = load_params(params_dir)
    assert p.profile == "full"
    assert p.grid.archs == PAPER_SHAPES
    assert p.grid.baselines == ["ce"]
    assert len(list(p.cells())) == 36 + 6  # every MW-Net cell, and one CE run per column
    imb, uni, flip = (p.recipe_for(c) for c in ("imbalance_100", "uniform_40", "flip_40"))
    assert (imb.backbone.name, imb.backbone.depth, imb.epochs, imb.lr_milestones) == ("resnet", 32, 100, [80, 90])
    assert (uni.backbone.name, uni.backbone.depth, uni.backbone.width, uni.epochs) == ("wrn", 28, 10, 40)
    assert (flip.epochs, flip.lr_milestones) == (60, [40, 50])
    assert imb.weighting_optimizer.lr == 1e-5 and flip.weighting_optimizer.lr == 1e-3
    assert p.corruptions["imbalance_100"].meta_count_per_class(10) == 10
    assert p.corruptions["uniform_40"].meta_count_per_class(10) == 100
    assert p.corruptions["uniform_40"].meta_count_per_class(100) == 10
    assert p.corruptions["flip_40"].targets == 2


def test_quick_profile_overlays_recipes_only(params_dir):
    full, quick = load_params(params_dir), load_params(params_dir, profile="quick")
    assert quick.profile == "quick"
    assert list(quick.cells()) == list(full.cells())  # every cell of the grid
    r = quick.recipe_for("uniform_40")
    assert r.backbone.name == "wrn" and r.epochs < full.recipe_for("uniform_40").epochs
    assert r.train_subset is not None
    # untouched keys keep the full values
    assert r.weighting_optimizer == full.recipe_for("uniform_40").weighting_optimizer


def test_run_yaml_selects_profile(params_dir):
    edit(params_dir / "run.yaml", lambda d: d.update(profile="quick"))
    assert load_params(params_dir).profile == "quick"


def test_local_overlay_sets_data_source(params_dir):
    (params_dir / "local.yaml").write_text(
        "data: {sources: {cifar10: {location: /somewhere/cifar, allow_unverified: false}}}\n"
    )
    p = load_params(params_dir)
    assert p.data.sources["cifar10"].location == "/somewhere/cifar"
    assert p.data.sources["cifar100"].location == "download"


@pytest.mark.parametrize(
    "file, change, expected",
    [
        ("grid.yaml", lambda d: d.update(datasets=["cifar10", "svhn"]), ["grid.yaml", "datasets.1", "'svhn'", "'cifar10' or 'cifar100'"]),
        ("grid.yaml", lambda d: d.update(archs=["1-100-2"]), ["grid.yaml", "archs", "'1-100-2'", "1-h1-...-hk-1"]),
        ("grid.yaml", lambda d: d.update(corruptions=["uniform_40", "gaussian"]), ["grid.yaml", "corruptions.1", "'gaussian'", "flip_40"]),
        ("grid.yaml", lambda d: d.update(seeds=[1, 1]), ["grid.yaml", "seeds", "duplicate"]),
        ("corruptions.yaml", lambda d: d["uniform_40"].update(rate=1.5), ["corruptions.yaml", "field uniform_40.rate = 1.5", "less than 1"]),
        ("corruptions.yaml", lambda d: d["imbalance_100"].update(factor=0.5), ["corruptions.yaml", "factor", "0.5", "greater than or equal to 1"]),
        ("corruptions.yaml", lambda d: d["flip_40"].update(targets=3), ["corruptions.yaml", "targets", "3", "1 or 2"]),
        ("corruptions.yaml", lambda d: d["flip_40"].update(kind="swap"), ["corruptions.yaml", "flip_40", "'swap'", "'imbalance', 'uniform', 'flip'"]),
        ("corruptions.yaml", lambda d: d["imbalance_100"].update(meta_per_class=600), ["corruptions.yaml", "imbalance_100", "600 meta images per class", "500"]),
        ("corruptions.yaml", lambda d: d["uniform_40"].update(meta_total=1001), ["corruptions.yaml", "uniform_40", "1001", "evenly"]),
        ("corruptions.yaml", lambda d: d["uniform_40"].update(recipe="nope"), ["corruptions.yaml", "recipe", "'nope'", "imbalance"]),
        ("recipes.yaml", lambda d: d["flip"].update(epochs="sixty"), ["recipes.yaml", "field flip.epochs = 'sixty'", "integer"]),
        ("recipes.yaml", lambda d: d["flip"].update(lr_milestones=[50, 40]), ["recipes.yaml", "flip", "increasing"]),
        ("recipes.yaml", lambda d: d["flip"].update(learning_rate=0.1), ["recipes.yaml", "flip.learning_rate", "unknown key"]),
        ("recipes.yaml", lambda d: d["flip"]["backbone"].update(depth=30), ["recipes.yaml", "backbone", "6n+2"]),
        ("recipes.yaml", lambda d: d["stable"]["weighting_optimizer"].update(lr=-1), ["recipes.yaml", "field stable.weighting_optimizer.lr = -1", "greater than 0"]),
        ("recipes.yaml", lambda d: d["flip"].update(precision="fp16"), ["recipes.yaml", "precision", "'fp16'", "'auto', 'fp32' or 'bf16'"]),
    ],
)
def test_bad_params_name_file_field_value_and_allowed(params_dir, file, change, expected):
    edit(params_dir / file, change)
    with pytest.raises(ParamsError) as e:
        load_params(params_dir)
    msg = str(e.value)
    for fragment in expected:
        assert fragment in msg, f"{fragment!r} missing from:\n{msg}"


def test_unknown_profile_lists_known(params_dir):
    with pytest.raises(ParamsError, match=r"known profiles: \['full', 'mini', 'quick'\]"):
        load_params(params_dir, profile="tiny")


def test_bad_overlay_key_names_overlay_file(params_dir):
    (params_dir / "local.yaml").write_text("recipe: {}\n")
    with pytest.raises(ParamsError, match=r"local.yaml: unknown top-level key\(s\) \['recipe'\]"):
        load_params(params_dir)


def test_missing_and_malformed_files(params_dir):
    (params_dir / "tracking.yaml").unlink()
    with pytest.raises(ParamsError, match="tracking.yaml: file not found"):
        load_params(params_dir)
    (params_dir / "tracking.yaml").write_text("experiment: [unclosed\n")
    with pytest.raises(ParamsError, match="tracking.yaml: not valid YAML"):
        load_params(params_dir)


@pytest.mark.parametrize("shape, widths", [("1-100-1", [1, 100, 1]), ("1-10-10-10-1", [1, 10, 10, 10, 1]), ("1-1", [1, 1])])
def test_parse_shape(shape, widths):
    assert parse_shape(shape) == widths


@pytest.mark.parametrize("bad", ["", "100", "2-100-1", "1-100-2", "1-0-1", "1--1", "1-100-1 ", "1-a-1"])
def test_parse_shape_rejects(bad):
    with pytest.raises(ValueError, match="malformed"):
        parse_shape(bad)


def test_cli_params_check(params_dir, capsys):
    from mwnet.cli import main

    assert main(["params", "check", "--params", str(params_dir), "--profile", "quick"]) == 0
    assert "42 runs" in capsys.readouterr().out
    edit(params_dir / "grid.yaml", lambda d: d.update(seeds=[-1]))
    assert main(["params", "check", "--params", str(params_dir)]) == 2
    err = capsys.readouterr().err
    assert "grid.yaml" in err and "seeds.0" in err and "greater than or equal to 0" in err


def test_baseline_run_recipe_leaves_out_weighting_net_settings(params_dir):
    """A CE run depends on no weighting-net setting: editing one retrains MW-Net runs only."""
    before = load_params(params_dir)
    edit(params_dir / "recipes.yaml", lambda d: d["flip"]["weighting_optimizer"].update(lr=2.0e-3))
    after = load_params(params_dir)
    assert after.run_recipe("flip_40", "ce") == before.run_recipe("flip_40", "ce")
    assert after.run_recipe("flip_40", "1-100-1") != before.run_recipe("flip_40", "1-100-1")
    assert "weighting_optimizer" not in after.run_recipe("flip_40", "ce")
    assert "meta_batch_size" in after.run_recipe("flip_40", "ce")  # shares the augmentation stream
    edit(params_dir / "recipes.yaml", lambda d: d["flip"].update(epochs=59))
    assert load_params(params_dir).run_recipe("flip_40", "ce") != before.run_recipe("flip_40", "ce")

"""Parameter files: pydantic models and the one loader everything uses.

params/ is the single source of truth. Each YAML file there is validated by its own model, so an
error names the file it came from. Layout:

    params/run.yaml          which profile is active (full | quick | ...)
    params/grid.yaml         datasets x corruptions x weighting-net shapes x seeds
    params/corruptions.yaml  corruption definitions (imbalance / uniform / flip) and their recipe
    params/recipes.yaml      training recipes (backbone, schedule, optimisers, ...)
    params/data.yaml         where raw data comes from and where derived data goes
    params/tracking.yaml     MLflow experiment and store
    params/report.yaml       tables and figures
    params/cluster.yaml      scheduler settings (time limit per recipe); change no result
    params/profiles/NAME.yaml  an overlay, keyed by file stem, deep-merged onto the files above
    params/local.yaml        optional, git-ignored overlay for machine-specific settings (data paths)

No model field has a numeric default: every number is in params/.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

DATASET_CLASSES = {"cifar10": 10, "cifar100": 100}
# Images per class in the official training splits (a property of the data, not a hyperparameter).
DATASET_TRAIN_PER_CLASS = {"cifar10": 5000, "cifar100": 500}
DATASET_TEST_SIZE = {"cifar10": 10000, "cifar100": 10000}
Dataset = Literal["cifar10", "cifar100"]

SHAPE_RE = re.compile(r"^1(-[1-9][0-9]*)*-1$")


class ParamsError(ValueError):
    """A parameter file is missing, malformed or inconsistent. The message names file and field."""


def parse_shape(shape: str) -> list[int]:
    """'1-100-1' -> [1, 100, 1]. Input and output width must be 1; hidden widths positive."""
    if not isinstance(shape, str) or not SHAPE_RE.match(shape):
        raise ValueError(
            f"weighting-net shape {shape!r} is malformed: expected '1-h1-...-hk-1' with positive "
            "integer hidden widths, e.g. '1-100-1' or '1-10-10-10-1'"
        )
    return [int(p) for p in shape.split("-")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# corruptions.yaml


class _CorruptionBase(Strict):
    recipe: str = Field(description="name of the training recipe in recipes.yaml")
    meta_per_class: PositiveInt | None = Field(
        None, description="clean meta images per class (imbalance protocol)"
    )
    meta_total: PositiveInt | None = Field(
        None, description="clean meta images in total, spread evenly over classes (noise protocol)"
    )

    @model_validator(mode="after")
    def _one_meta_size(self):
        if (self.meta_per_class is None) == (self.meta_total is None):
            raise ValueError("give exactly one of meta_per_class or meta_total")
        return self

    def meta_count_per_class(self, num_classes: int) -> int:
        if self.meta_per_class is not None:
            return self.meta_per_class
        if self.meta_total % num_classes:
            raise ValueError(
                f"meta_total={self.meta_total} does not split evenly over {num_classes} classes"
            )
        return self.meta_total // num_classes


class ImbalanceCorruption(_CorruptionBase):
    kind: Literal["imbalance"]
    factor: float = Field(ge=1, description="largest / smallest class size")


class UniformNoise(_CorruptionBase):
    kind: Literal["uniform"]
    rate: float = Field(ge=0, lt=1, description="probability a label is redrawn uniformly")


class FlipNoise(_CorruptionBase):
    kind: Literal["flip"]
    rate: float = Field(ge=0, lt=1, description="probability a label moves to another class")
    targets: Literal[1, 2] = Field(description="number of fixed target classes per class")
    target_seed: int = Field(ge=0, description="seed of the target draw: fixed, so every run seed shares "
                             "one transition (protocol: targets drawn once with a fixed seed)")


Corruption = Annotated[
    Union[ImbalanceCorruption, UniformNoise, FlipNoise], Field(discriminator="kind")
]


class CorruptionsFile(Strict):
    corruptions: dict[str, Corruption]

    @field_validator("corruptions")
    @classmethod
    def _names(cls, v):
        for name in v:
            if not re.match(r"^[A-Za-z0-9_]+$", name):
                raise ValueError(f"corruption name {name!r}: use letters, digits and '_' only")
        return v


# --------------------------------------------------------------------------------------------
# recipes.yaml


class BackboneSpec(Strict):
    name: Literal["resnet", "wrn"]
    depth: PositiveInt = Field(description="resnet: 6n+2 (32 = ResNet-32); wrn: 6n+4 (28)")
    width: PositiveInt = Field(description="resnet: first-stage channels (16); wrn: widen factor (10)")
    dropout: float = Field(ge=0, lt=1, description="wrn only; must be 0 for resnet")

    @model_validator(mode="after")
    def _depth(self):
        if self.name == "resnet" and (self.depth - 2) % 6:
            raise ValueError(f"resnet depth must be 6n+2 (e.g. 20, 32, 56), got {self.depth}")
        if self.name == "wrn" and (self.depth - 4) % 6:
            raise ValueError(f"wrn depth must be 6n+4 (e.g. 10, 16, 28), got {self.depth}")
        if self.name == "resnet" and self.dropout:
            raise ValueError("resnet has no dropout: set dropout: 0")
        return self


class SGDSpec(Strict):
    name: Literal["sgd"]
    lr: PositiveFloat
    momentum: float = Field(ge=0, lt=1)
    nesterov: bool
    weight_decay: float = Field(ge=0)


class AdamSpec(Strict):
    name: Literal["adam"]
    lr: PositiveFloat
    betas: tuple[float, float]
    weight_decay: float = Field(ge=0)


OptimizerSpec = Annotated[Union[SGDSpec, AdamSpec], Field(discriminator="name")]


class Recipe(Strict):
    backbone: BackboneSpec
    epochs: PositiveInt
    batch_size: PositiveInt
    meta_batch_size: PositiveInt
    eval_batch_size: PositiveInt
    classifier_optimizer: SGDSpec = Field(description="lr is the initial (scheduled) lr")
    lr_milestones: list[PositiveInt] = Field(description="epochs at which the lr is multiplied by lr_gamma")
    lr_gamma: float = Field(gt=0, le=1)
    weighting_optimizer: OptimizerSpec = Field(description="constant lr")
    weight_normalization: Literal["sum", "none"] = Field(
        description="sum: w_i / sum_j w_j (paper); none: mean of w_i * l_i (the 'stable' script)"
    )
    meta_gradient: Literal["jvp", "double_backward"] = Field(
        description="how the weighting-net gradient is computed; both are exact"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        description="auto: bf16 autocast where the device computes bf16 natively (CUDA; CPUs with "
                    "AVX512-BF16 or AMX), fp32 elsewhere")
    train_subset: PositiveInt | None = Field(description="use only this many training images (quick runs)")
    test_subset: PositiveInt | None = Field(description="evaluate on only this many test images (quick runs)")

    @model_validator(mode="after")
    def _milestones(self):
        m = self.lr_milestones
        if list(m) != sorted(set(m)):
            raise ValueError(f"lr_milestones must be strictly increasing, got {list(m)}")
        if m and m[-1] >= self.epochs:
            raise ValueError(f"lr_milestones must be < epochs ({self.epochs}), got {list(m)}")
        return self


class RecipesFile(Strict):
    recipes: dict[str, Recipe]


# --------------------------------------------------------------------------------------------
# grid.yaml, data.yaml, tracking.yaml, report.yaml, run.yaml


# Plain-training baselines: a run name that is not a weighting-net shape. "ce": cross-entropy, every
# sample weighted equally, same data, split, backbone, optimiser, schedule and seed as the MW-Net cells.
Baseline = Literal["ce"]
BASELINE_LABELS = {"ce": "CE, same schedule"}
BASELINES = get_args(Baseline)
# Recipe fields only an MW-Net run uses (Params.run_recipe)
WEIGHTING_NET_FIELDS = ("weighting_optimizer", "weight_normalization", "meta_gradient")


class GridSelection(Strict):
    """A sub-grid: every combination of these datasets, corruptions and shapes."""

    datasets: list[Dataset] = Field(min_length=1)
    corruptions: list[str] = Field(min_length=1)
    archs: list[str] = Field(min_length=1, description="weighting-net shapes of the grid's archs")


class Grid(Strict):
    datasets: list[Dataset] = Field(min_length=1)
    corruptions: list[str] = Field(min_length=1)
    archs: list[str] = Field(min_length=1, description="weighting-net shapes such as '1-100-1'")
    baselines: list[Baseline] = Field(
        description="plain-training rows trained beside the MW-Net cells of every column ([] = none)")
    seeds: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    select: list[GridSelection] | None = Field(
        None, description="narrow the product to the union of these sub-grids (a profile's choice); "
                          "null = every combination")

    @field_validator("archs")
    @classmethod
    def _archs(cls, v):
        for a in v:
            parse_shape(a)
        return v

    @field_validator("datasets", "corruptions", "archs", "baselines", "seeds")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate entries in {list(v)}")
        return v

    @model_validator(mode="after")
    def _selection_inside_grid(self):
        for i, sel in enumerate(self.select or []):
            for key in ("datasets", "corruptions", "archs"):
                outside = [v for v in getattr(sel, key) if v not in getattr(self, key)]
                if outside:
                    raise ValueError(f"select.{i}.{key}: {outside} not in the grid's {key} {getattr(self, key)}")
        return self

    def selected(self, dataset: str, corruption: str, arch: str) -> bool:
        """Whether this MW-Net cell is in the grid (always, without a selection)."""
        if self.select is None:
            return True
        return any(dataset in s.datasets and corruption in s.corruptions and arch in s.archs for s in self.select)

    def columns(self) -> list[tuple[str, str]]:
        """(dataset, corruption) columns of the table that hold at least one selected cell."""
        return [(d, c) for d in self.datasets for c in self.corruptions
                if any(self.selected(d, c, a) for a in self.archs)]

    def rows(self) -> list[str]:
        """Table rows: the baselines, then the shapes that have at least one selected cell."""
        shapes = [a for a in self.archs if any(self.selected(d, c, a) for d in self.datasets for c in self.corruptions)]
        return list(self.baselines) + shapes

    def in_grid(self, dataset: str, corruption: str, row: str) -> bool:
        """Whether a (row, column) of the table is trained: a baseline runs in every selected column."""
        if row in self.baselines:
            return (dataset, corruption) in self.columns()
        return self.selected(dataset, corruption, row)


class SourceSpec(Strict):
    location: str = Field(description="'download' (torchvision, needs internet), a folder, or a .tar.gz")
    allow_unverified: bool = Field(
        description="accept files whose checksums match nothing known (synthetic test data); recorded"
    )


class Augmentation(Strict):
    """Normalisation of every image the networks see, and the training crop's reflect padding."""
    mean_255: tuple[float, float, float] = Field(description="per-channel mean, 0..255 units")
    std_255: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = Field(description="per-channel std, 0..255 units")
    crop_padding: int = Field(ge=0, le=16, description="reflect padding before the random crop")


class DataSettings(Strict):
    raw_root: str
    corrupted_root: str
    sources: dict[Dataset, SourceSpec]
    augmentation: Augmentation


class Tracking(Strict):
    experiment: str = Field(min_length=1)
    tracking_uri: str = Field(min_length=1, description="MLFLOW_TRACKING_URI, when set, overrides this")


class WeightCurveSpec(Strict):
    max_loss: PositiveFloat
    points: Annotated[int, Field(ge=2)]


class Report(Strict):
    paper_table: str = Field(description="CSV of the paper's values, kept in the repo")
    models_root: str
    results_root: str
    decimals: Annotated[int, Field(ge=0, le=4)]
    weight_curve: WeightCurveSpec


class ClusterSettings(Strict):
    time_limit_min: dict[str, PositiveInt] = Field(description="per recipe: a training job's time limit (minutes)")


class RunFile(Strict):
    profile: str = Field(min_length=1)
    cpu_max_hours: PositiveFloat = Field(
        description="on a CPU, the pipeline stops before training when its estimate is longer")
    allow_long_cpu_run: bool = Field(description="train on a CPU even when the estimate is longer")
    runs_per_gpu: PositiveInt = Field(
        description="on a machine with several GPUs, at most this many runs share each one")
    train_threads: PositiveInt = Field(
        description="CPU threads per training job (torch intra-op threads); the plan assumes it")
    memory_format: Literal["auto", "contiguous", "channels_last"] = Field(
        description="tensor layout of images and convolution weights; auto: channels_last")


# --------------------------------------------------------------------------------------------
# loading


FILES = {
    "run": (RunFile, None),
    "grid": (Grid, None),
    "corruptions": (CorruptionsFile, "corruptions"),
    "recipes": (RecipesFile, "recipes"),
    "data": (DataSettings, None),
    "tracking": (Tracking, None),
    "report": (Report, None),
    "cluster": (ClusterSettings, None),
}


class Params(Strict):
    """Everything in params/, validated and cross-checked. Build with load_params()."""

    profile: str
    run: RunFile
    grid: Grid
    corruptions: dict[str, Corruption]
    recipes: dict[str, Recipe]
    data: DataSettings
    tracking: Tracking
    report: Report
    cluster: ClusterSettings
    params_dir: str

    def recipe_for(self, corruption: str) -> Recipe:
        return self.recipes[self.corruptions[corruption].recipe]

    def run_recipe(self, corruption: str, arch: str) -> dict:
        """The recipe fields a run of `arch` depends on, as JSON: what its stamp, checkpoint and
        metrics.json record. A baseline has no weighting net, so the weighting-net settings do not
        change it (and editing them does not retrain it); meta_batch_size stays, as the meta batches
        draw from the shared augmentation stream."""
        d = self.recipe_for(corruption).model_dump(mode="json")
        if arch in BASELINES:
            for key in WEIGHTING_NET_FIELDS:
                d.pop(key)
        return d

    def cells(self):
        """Every training run (dataset, corruption, arch, seed) of the grid, in table order: the
        baselines' runs first, then the MW-Net cells; `arch` is a shape or a baseline name."""
        for row in self.grid.rows():
            for dataset, corruption in self.grid.columns():
                if self.grid.in_grid(dataset, corruption, row):
                    for seed in self.grid.seeds:
                        yield dataset, corruption, row, seed


def _read_yaml(path: Path) -> Any:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    return data


def _deep_merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _file_loc(loc: tuple, data: Any) -> str:
    """Pydantic's error location as a path in the YAML file: skip union tags that are not keys."""
    parts, node = [], data
    for p in loc:
        if isinstance(node, dict) and p in node:
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and p < len(node):
            node = node[p]
        elif isinstance(node, dict) and p in (node.get("kind"), node.get("name")):
            continue  # discriminated-union tag, not a key in the file
        else:
            node = None
        parts.append(str(p))
    return ".".join(parts) or "(top level)"


def _format_validation_error(err: ValidationError, where: str, data: Any, unwrap: str | None) -> str:
    lines = [f"{where}: {err.error_count()} invalid field(s)"]
    for e in err.errors():
        loc = e["loc"][1:] if unwrap and e["loc"][:1] == (unwrap,) else e["loc"]
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here; check the spelling)"
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  field {_file_loc(loc, data)} = {shown}: {msg}")
    return "\n".join(lines)


def _validate(model, data: dict, where: str, unwrap: str | None = None):
    try:
        return model.model_validate({unwrap: data} if unwrap else data)
    except ValidationError as e:
        raise ParamsError(_format_validation_error(e, where, data, unwrap)) from None


def load_params(params_dir: str | Path = "params", profile: str | None = None) -> Params:
    """Read, overlay and validate params/. `profile` overrides params/run.yaml's profile."""
    params_dir = Path(params_dir)
    raw = {stem: _read_yaml(params_dir / f"{stem}.yaml") for stem in FILES}
    sources = {stem: str(params_dir / f"{stem}.yaml") for stem in FILES}

    run = _validate(RunFile, raw["run"], sources["run"])
    profile = profile or run.profile
    overlays = []
    profile_path = params_dir / "profiles" / f"{profile}.yaml"
    if profile != "full":
        if not profile_path.exists():
            known = sorted({"full"} | {p.stem for p in (params_dir / "profiles").glob("*.yaml")})
            raise ParamsError(f"profile {profile!r}: no file {profile_path}; known profiles: {known}")
        overlays.append(profile_path)
    elif profile_path.exists():
        overlays.append(profile_path)
    local = params_dir / "local.yaml"
    if local.exists():
        overlays.append(local)
    for ov in overlays:
        data = _read_yaml(ov)
        unknown = sorted((set(data) - set(FILES)) | ({"run"} & set(data)))
        if unknown:
            raise ParamsError(
                f"{ov}: unknown top-level key(s) {unknown}; allowed: {sorted(set(FILES) - {'run'})}"
            )
        for stem, part in data.items():
            if not isinstance(part, dict):
                raise ParamsError(f"{ov}: field {stem} must be a mapping")
            raw[stem] = _deep_merge(raw[stem], part)
            sources[stem] += f" (with overlay {ov})"

    parsed = {}
    for stem, (model, key) in FILES.items():
        parsed[stem] = _validate(model, raw[stem], sources[stem], unwrap=key)

    params = Params(
        profile=profile,
        run=run,
        grid=parsed["grid"],
        corruptions=parsed["corruptions"].corruptions,
        recipes=parsed["recipes"].recipes,
        data=parsed["data"],
        tracking=parsed["tracking"],
        report=parsed["report"],
        cluster=parsed["cluster"],
        params_dir=str(params_dir),
    )
    _cross_check(params, sources)
    return params


def _cross_check(p: Params, sources: dict[str, str]) -> None:
    """Checks that span files: names that refer to each other, meta sizes that fit the data."""
    errors = []
    for i, c in enumerate(p.grid.corruptions):
        if c not in p.corruptions:
            errors.append(
                f"{sources['grid']}: field corruptions.{i} = {c!r}: unknown corruption; "
                f"defined in corruptions.yaml: {sorted(p.corruptions)}"
            )
    for name, c in p.corruptions.items():
        if c.recipe not in p.recipes:
            errors.append(
                f"{sources['corruptions']}: field {name}.recipe = {c.recipe!r}: unknown recipe; "
                f"defined in recipes.yaml: {sorted(p.recipes)}"
            )
        for ds in p.grid.datasets:
            n_cls = DATASET_CLASSES[ds]
            try:
                per_class = c.meta_count_per_class(n_cls)
            except ValueError as e:
                errors.append(f"{sources['corruptions']}: field {name}: {e} ({ds})")
                continue
            if per_class > DATASET_TRAIN_PER_CLASS[ds]:
                errors.append(
                    f"{sources['corruptions']}: field {name}: {per_class} meta images per class > "
                    f"{DATASET_TRAIN_PER_CLASS[ds]} images per class in {ds}"
                )
    for name in sorted({c.recipe for c in p.corruptions.values()} - set(p.cluster.time_limit_min)):
        errors.append(f"{sources['cluster']}: field time_limit_min: no entry for recipe {name!r} "
                      f"(recipes with one: {sorted(p.cluster.time_limit_min)})")
    for ds in p.grid.datasets:
        if ds not in p.data.sources:
            errors.append(
                f"{sources['data']}: field sources: no entry for dataset {ds!r} used in grid.yaml"
            )
    if errors:
        raise ParamsError("\n".join(errors))

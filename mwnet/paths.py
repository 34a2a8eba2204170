"""Where every artifact lives. The CLI, the Snakefile and dvc.yaml all follow these patterns.

Patterns use str.format / Snakemake wildcard syntax ({dataset}, {corruption}, {arch}, {seed}, {profile}).
"""

from __future__ import annotations

from pathlib import Path

RAW_DIRNAME = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}

# relative to data.corrupted_root
SPLIT_DIR = "{dataset}/{corruption}/seed{seed}"
SPLIT_FILE = "split.npz"
SUMMARY_FILE = "summary.json"

# relative to report.models_root
RUN_DIR = "{profile}/{dataset}/{corruption}/{arch}/seed{seed}"
RUN_OUTPUTS = ("metrics.json", "history.csv", "weight_curve.csv", "model.pt")
CHECKPOINT_FILE = "checkpoint.pt"  # not a declared output: it must survive a killed job to resume


def raw_dir(raw_root: str | Path, dataset: str) -> Path:
    return Path(raw_root) / RAW_DIRNAME[dataset]


def split_dir(corrupted_root: str | Path, dataset: str, corruption: str, seed: int) -> Path:
    return Path(corrupted_root) / SPLIT_DIR.format(dataset=dataset, corruption=corruption, seed=seed)


def run_dir(models_root: str | Path, profile: str, dataset: str, corruption: str, arch: str, seed: int) -> Path:
    return Path(models_root) / RUN_DIR.format(
        profile=profile, dataset=dataset, corruption=corruption, arch=arch, seed=seed
    )

"""MW-Net Table 1 pipeline: raw data -> corrupted datasets -> one training run per grid cell -> tables.

    snakemake --cores 4 all                          # profile from params/run.yaml
    snakemake --cores 4 all --config profile=quick   # another profile
    snakemake --cores 4 all --resources gpu=1        # at most one training job per GPU
    snakemake -n all                                 # what would run, and why

Everything (grid, recipes, paths, profile) comes from params/ through mwnet.config.load_params; no
number is restated here. Targets: all (default), splits (corrupted datasets), runs (every training
run). Rerun decisions are content-based (workflow/rules/common.smk): a job's declared output is a
stamp named by the hash of its resolved parameters, so editing params/ reruns exactly the jobs whose
parameters changed, independent of file mtimes and of .snakemake/ metadata (DVC keeps neither).
Config keys: profile, params (parameter folder, default params), mwnet (command prefix that runs the
mwnet CLI, default: this Python with -m mwnet.cli).
"""

include: "workflow/rules/common.smk"


# `snakemake --report report.html`: this description, the table, the figures and the plan
report: "workflow/report/workflow.rst"


rule all:
    # The run stamps are listed too: Snakemake does not rebuild a missing intermediate file when what
    # depends on it is up to date, so without them a deleted run folder would not be redone.
    default_target: True
    input:
        RUN_STAMPS,
        REPORT_STAMP,
    message:
        f"all: {len(RUN_STAMPS)} runs of profile {PROFILE} and the report"


rule splits:
    input:
        SPLIT_STAMPS,
    message:
        f"splits: {len(SPLIT_STAMPS)} corrupted datasets"


rule runs:
    input:
        RUN_STAMPS,
    message:
        f"runs: {len(RUN_STAMPS)} training runs of profile {PROFILE}"


onstart:
    plan_and_guard()


onsuccess:
    print_summary()


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"

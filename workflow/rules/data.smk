# Raw data (mwnet data fetch) and corrupted datasets (mwnet data corrupt). Both are light and may
# need the internet (download), so they run on the machine that runs Snakemake, also on a cluster.

localrules: fetch, corrupt

RAW_DATASET = {name: ds for ds, name in paths.RAW_DIRNAME.items()}  # cifar-10-batches-py -> cifar10


rule fetch:
    # Where the data come from is a setting (params/data.yaml sources, params/local.yaml). The tool
    # verifies the content and writes the folder atomically.
    output:
        directory(f"{P.data.raw_root}/{{rawname}}"),
    wildcard_constraints:
        rawname="|".join(re.escape(n) for n in paths.RAW_DIRNAME.values()),
    params:
        dataset=lambda w: RAW_DATASET[w.rawname],
    message:
        "fetch raw {params.dataset} -> {output}"
    shell:
        "{MWNET} data fetch --dataset {params.dataset} {PARAMS_ARG}"


rule corrupt:
    # The tool replaces the split folder whole (atomically); the stamp is written into it afterwards.
    input:
        raw=lambda w: ancient(str(paths.raw_dir(P.data.raw_root, w.dataset))),
    output:
        stamp=SPLIT_STAMP,
    params:
        spec=lambda w: checked_spec("split", split_spec(w.dataset, w.corruption, w.seed), w),
        files=lambda w: [f"{SPLIT_DIR.format(**w)}/{n}" for n in (paths.SPLIT_FILE, paths.SUMMARY_FILE)],
    message:
        "corrupt {wildcards.dataset} {wildcards.corruption} seed {wildcards.seed}"
    shell:
        "{STAMP} begin {output.stamp:q} >/dev/null\n"
        "{MWNET} data corrupt --dataset {wildcards.dataset} --corruption {wildcards.corruption}"
        " --seed {wildcards.seed} {PARAMS_ARG}\n"
        "{STAMP} finish {output.stamp:q} --spec {params.spec:q} --require {params.files:q}"

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
    log:
        f"{LOGS}/fetch/{{rawname}}.log",
    params:
        dataset=lambda w: RAW_DATASET[w.rawname],
        mwnet=MWNET,
        params_arg=PARAMS_ARG,
    message:
        "fetch raw {params.dataset} -> {output} (log: {log})"
    shell:
        "{params.mwnet} data fetch --dataset {params.dataset} {params.params_arg} > {log:q} 2>&1"


rule corrupt:
    # The tool replaces the split folder whole (atomically); the stamp is written into it afterwards.
    input:
        raw=lambda w: ancient(str(paths.raw_dir(P.data.raw_root, w.dataset))),
    output:
        stamp=SPLIT_STAMP,
    log:
        # outside the split folder, which the tool replaces whole
        f"{LOGS}/corrupt/{{dataset}}/{{corruption}}/seed{{seed}}/spec-{{hash}}.log",
    params:
        spec=lambda w: checked_spec("split", split_spec(w.dataset, w.corruption, w.seed), w),
        files=lambda w: [str(Path(SPLIT_DIR.format(**w), n)) for n in (paths.SPLIT_FILE, paths.SUMMARY_FILE)],
        mwnet=MWNET,
        params_arg=PARAMS_ARG,
        stamp=STAMP,
    message:
        "corrupt {wildcards.dataset} {wildcards.corruption} seed {wildcards.seed} (log: {log})"
    shell:
        "{params.stamp} begin {output.stamp:q} >/dev/null\n"
        "{params.mwnet} data corrupt --dataset {wildcards.dataset} --corruption {wildcards.corruption}"
        " --seed {wildcards.seed} {params.params_arg} > {log:q} 2>&1\n"
        "{params.stamp} finish {output.stamp:q} --spec {params.spec:q} --require {params.files:q}"

# One training run per grid cell and seed (mwnet train). metrics.json is the per-cell evaluation
# (best and final test accuracy), so there is no separate evaluation rule.
#
# resources gpu=1: cap concurrent training with --resources gpu=N (unset, it caps nothing, e.g. on CPU).
# threads: torch's intra-op threads follow the job's thread count (OMP_NUM_THREADS), params/run.yaml
# train_threads (1: --cores N runs N single-threaded jobs instead of N jobs that each grab every core).
# The checkpoint (checkpoint.pt) is not a declared output: a job that was killed leaves it (and a
# spec-<hash>.started marker, no stamp), and the next run resumes from it. `stamp.py begin` prints
# --restart when the folder holds work of other parameters (params/ was edited), whose checkpoint
# must not be resumed.


rule train:
    input:
        split=lambda w: ancient(split_stamp(w.dataset, w.corruption, w.seed)),
    output:
        stamp=RUN_STAMP,
    log:
        RUN_LOG,
    params:
        spec=lambda w: checked_spec("run", run_spec(w.dataset, w.corruption, w.arch, w.seed), w),
        folder=lambda w: RUN_DIR.format(**w),
        files=lambda w: [str(Path(RUN_DIR.format(**w), n)) for n in paths.RUN_OUTPUTS],
        mwnet=MWNET,
        params_arg=PARAMS_ARG,
        profile=PROFILE,
        stamp=STAMP,
        plan=str(PLAN_FILE),
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        runtime=lambda w: P.cluster.time_limit_min[P.corruptions[w.corruption].recipe],  # minutes (SLURM --time)
    message:
        "train {wildcards.dataset} {wildcards.corruption} {wildcards.arch} seed {wildcards.seed} "
        "(profile {params.profile}; epoch lines in {log})"
    shell:
        "{params.stamp} progress {params.plan:q}\n"
        "restart=$({params.stamp} begin {output.stamp:q} --spec {params.spec:q})\n"
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} {params.mwnet} train --dataset {wildcards.dataset}"
        " --corruption {wildcards.corruption} --arch {wildcards.arch} --seed {wildcards.seed}"
        " --profile {params.profile:q} {params.params_arg} --out {params.folder:q} $restart > {log:q} 2>&1\n"
        "{params.stamp} finish {output.stamp:q} --spec {params.spec:q} --require {params.files:q}"

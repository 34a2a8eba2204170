# Tables, metrics.json and figures from every run of the grid (mwnet report), and the plan of what
# regenerating them costs here (mwnet plan --every-run).
#
# The stamp decides when the report reruns, as for every job. The table, the figures and the plan are
# declared outputs too, with fixed names, so that `snakemake --report report.html` can show them
# (report()). The two designs meet without conflict: the inputs are ancient() and the profile sets
# rerun-triggers to mtime only, so a fixed-name output restored by `dvc checkout` with a new mtime, or
# carrying .snakemake/ metadata of another version, triggers nothing; the hash-named stamp alone
# changes with params/. Snakemake deletes the old table before the job runs, and mwnet report writes
# each file atomically.

localrules: report


rule report:
    input:
        runs=[ancient(s) for s in RUN_STAMPS],
        paper=ancient(P.report.paper_table),
    output:
        stamp=REPORT_STAMP,
        table=report(str(RESULTS / "table1.csv"), caption="../report/table1.rst", category="Table 1"),
        table_md=report(str(RESULTS / "table1.md"), caption="../report/table1_md.rst", category="Table 1"),
        weight_curves=report(str(RESULTS / "figures" / "weight_curves.png"),
                             caption="../report/weight_curves.rst", category="Figures"),
        test_accuracy=report(str(RESULTS / "figures" / "test_accuracy.png"),
                             caption="../report/test_accuracy.rst", category="Figures"),
        weight_groups=report(str(RESULTS / "figures" / "weight_groups.png"),
                             caption="../report/weight_groups.rst", category="Figures"),
        plan=report(str(RESULTS / "plan.txt"), caption="../report/plan.rst", category="Plan"),
    log:
        REPORT_LOG,
    params:
        spec=json.dumps(REPORT_SPEC, sort_keys=True, separators=(",", ":")),
        files=REPORT_FILES,
        mwnet=MWNET,
        params_arg=PARAMS_ARG,
        profile=PROFILE,
        stamp=STAMP,
        threads=TRAIN_THREADS,
        device=str(config.get("device", "auto")),
    message:
        f"report: tables and figures of profile {PROFILE} -> {RESULTS} (log: {{log}})"
    shell:
        "{params.stamp} begin {output.stamp:q} >/dev/null\n"
        "{params.mwnet} report {params.params_arg} --profile {params.profile:q} > {log:q} 2>&1\n"
        "{params.mwnet} plan {params.params_arg} --profile {params.profile:q} --every-run"
        " --threads {params.threads} --device {params.device} --out {output.plan:q} >> {log:q} 2>&1\n"
        "{params.stamp} finish {output.stamp:q} --spec {params.spec:q} --require {params.files:q}"

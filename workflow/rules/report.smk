# Tables, metrics.json and figures from every run of the grid (mwnet report). As for every job,
# the declared output is the stamp alone: an output with a fixed name would carry Snakemake metadata
# of whichever version made it last, and after `dvc checkout` of another version Snakemake's
# params/input triggers would rerun the job for nothing. The tables are checked before the stamp is
# written, and mwnet report writes each file atomically.

localrules: report


rule report:
    input:
        runs=[ancient(s) for s in RUN_STAMPS],
        paper=ancient(P.report.paper_table),
    output:
        stamp=REPORT_STAMP,
    params:
        spec=json.dumps(REPORT_SPEC, sort_keys=True, separators=(",", ":")),
        files=REPORT_FILES,
    message:
        "report: tables and figures of profile {PROFILE} -> {RESULTS}/"
    shell:
        "{STAMP} begin {output.stamp:q} >/dev/null\n"
        "{MWNET} report {PARAMS_ARG} --profile {PROFILE:q}\n"
        "{STAMP} finish {output.stamp:q} --spec {params.spec:q} --require {params.files:q}"

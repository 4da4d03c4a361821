# collect -> figures -> report (mirrors the stages of the same names in dvc.yaml).

TABLES = [
    "results/tables/epochs.csv",
    "results/tables/summary.csv",
    "results/tables/runs.csv",
    "results/tables/provenance.json",
]


rule collect:
    input:
        expand("results/runs/{run}/{f}", run=RUNS, f=["metrics.csv", "summary.json"]),
    output:
        TABLES,
        metrics="results/metrics.json",
    conda:
        "../envs/cnnvit.yaml"
    log:
        "logs/collect.log",
    params:
        cfg=stage_params(config, "collect"),
        sets=cli_sets("collect"),
    shell:
        "cnnvit collect --runs-dir results/runs --out-dir results/tables "
        "--metrics {output.metrics} {params.sets} > {log} 2>&1"


rule figures:
    input:
        "results/tables/epochs.csv",
        "results/tables/summary.csv",
    output:
        directory("results/figures"),
    conda:
        "../envs/cnnvit.yaml"
    log:
        "logs/figures.log",
    params:
        cfg=stage_params(config, "figures"),
        sets=cli_sets("figures"),
    shell:
        "cnnvit figures --tables-dir results/tables --out-dir {output} {params.sets} > {log} 2>&1"


rule report:
    input:
        TABLES,
        "results/figures",
        template="report/template.html.j2",
    output:
        "report/index.html",
    conda:
        "../envs/cnnvit.yaml"
    log:
        "logs/report.log",
    params:
        cfg=stage_params(config, "report"),
        sets=cli_sets("report"),
    shell:
        "cnnvit report --tables-dir results/tables --figures-dir results/figures "
        "--template {input.template} --out {output} {params.sets} > {log} 2>&1"

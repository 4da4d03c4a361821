# collect -> figures -> report


rule collect:
    input:
        P.run_outputs(RUNS),
        P.code_deps("collect"),
    output:
        P.TABLES,
        metrics=P.METRICS,
    log:
        "logs/collect.log",
    conda:
        "../envs/cnnvit.yaml"
    params:
        values=P.param_values(PARAMS.raw, "collect"),
        sets=P.set_flags(BASE, PARAMS.raw, P.param_keys("collect", PARAMS.profile)),
    shell:
        P.command("collect") + " {params.sets} > {log} 2>&1"


rule figures:
    input:
        P.TABLES,
        P.code_deps("figures"),
    output:
        directory(P.FIGURES_DIR),
    log:
        "logs/figures.log",
    conda:
        "../envs/cnnvit.yaml"
    params:
        sets=P.set_flags(BASE, PARAMS.raw, P.param_keys("figures", PARAMS.profile)),
    shell:
        P.command("figures") + " {params.sets} > {log} 2>&1"


rule report:
    input:
        P.TABLES,
        P.FIGURES_DIR,
        P.TEMPLATE,
        P.code_deps("report"),
    output:
        P.REPORT,
    log:
        "logs/report.log",
    conda:
        "../envs/cnnvit.yaml"
    params:
        values=P.param_values(PARAMS.raw, "report"),
        sets=P.set_flags(BASE, PARAMS.raw, P.param_keys("report", PARAMS.profile)),
    shell:
        P.command("report") + " {params.sets} > {log} 2>&1"

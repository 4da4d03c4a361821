# collect -> figures -> report. The tables and figures are marked for `snakemake --report`.


rule collect:
    input:
        S.inputs("collect", PARAMS, list(RUNS.values())),
    output:
        **S.outputs("collect", PARAMS),
    log:
        S.log("collect"),
    conda:
        "../envs/cnnvit.yaml"
    params:
        values=S.param_values("collect", PARAMS),
    shell:
        S.command("collect") + " > {log} 2>&1"


rule figures:
    input:
        S.inputs("figures", PARAMS),
    output:
        **S.outputs("figures", PARAMS),
    log:
        S.log("figures"),
    conda:
        "../envs/cnnvit.yaml"
    params:
        values=S.param_values("figures", PARAMS),
    shell:
        S.command("figures") + " > {log} 2>&1"


rule report:
    input:
        S.inputs("report", PARAMS),
    output:
        **S.outputs("report", PARAMS),
    log:
        S.log("report"),
    conda:
        "../envs/cnnvit.yaml"
    params:
        values=S.param_values("report", PARAMS),
    shell:
        S.command("report") + " > {log} 2>&1"

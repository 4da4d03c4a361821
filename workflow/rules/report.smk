# collect -> figures -> report. The tables and figures are marked for `snakemake --report`.


rule collect:
    input:
        S.inputs("collect", PARAMS, list(RUNS.values())),
    output:
        **S.outputs("collect"),
    log:
        S.log("collect"),
    conda:
        "../envs/cnnvit.yaml"
    params:
        values=S.param_values("collect", PARAMS),
        sets=S.set_flags("collect", BASE, PARAMS),
    shell:
        S.command("collect") + " {params.sets} > {log} 2>&1"


rule figures:
    input:
        S.inputs("figures", PARAMS),
    output:
        **S.outputs("figures"),
    log:
        S.log("figures"),
    conda:
        "../envs/cnnvit.yaml"
    params:
        sets=S.set_flags("figures", BASE, PARAMS),
    shell:
        S.command("figures") + " {params.sets} > {log} 2>&1"


rule report:
    input:
        S.inputs("report", PARAMS),
    output:
        **S.outputs("report"),
    log:
        S.log("report"),
    conda:
        "../envs/cnnvit.yaml"
    params:
        values=S.param_values("report", PARAMS),
        sets=S.set_flags("report", BASE, PARAMS),
    shell:
        S.command("report") + " {params.sets} > {log} 2>&1"

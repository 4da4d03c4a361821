# download -> prepare


rule download:
    input:
        S.inputs("download", PARAMS),
    output:
        **S.outputs("download"),
    log:
        S.log("download"),
    conda:
        "../envs/cnnvit.yaml"
    params:
        values=S.param_values("download", PARAMS),
        sets=S.set_flags("download", BASE, PARAMS),
    shell:
        S.command("download") + " {params.sets} > {log} 2>&1"


rule prepare:
    input:
        S.inputs("prepare", PARAMS),
    output:
        **S.outputs("prepare"),
    log:
        S.log("prepare"),
    conda:
        "../envs/cnnvit.yaml"
    params:
        values=S.param_values("prepare", PARAMS),
        sets=S.set_flags("prepare", BASE, PARAMS),
    shell:
        S.command("prepare") + " {params.sets} > {log} 2>&1"

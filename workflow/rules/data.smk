# download -> prepare


rule download:
    input:
        S.inputs("download", PARAMS),
    output:
        **S.outputs("download", PARAMS),
    log:
        S.log("download"),
    conda:
        "../envs/cnnvit.yaml"
    params:
        values=S.param_values("download", PARAMS),
    shell:
        S.command("download") + " > {log} 2>&1"


rule prepare:
    input:
        S.inputs("prepare", PARAMS),
    output:
        **S.outputs("prepare", PARAMS),
    log:
        S.log("prepare"),
    conda:
        "../envs/cnnvit.yaml"
    params:
        values=S.param_values("prepare", PARAMS),
    shell:
        S.command("prepare") + " > {log} 2>&1"


rule corrupt:
    input:
        S.inputs("corrupt", PARAMS),
    output:
        **S.outputs("corrupt", PARAMS),
    log:
        S.log("corrupt"),
    conda:
        "../envs/cnnvit.yaml"
    params:
        values=S.param_values("corrupt", PARAMS),
    shell:
        S.command("corrupt") + " > {log} 2>&1"

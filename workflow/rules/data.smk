# download -> prepare


rule download:
    input:
        P.local_source(PARAMS.data.url),
        P.code_deps("download"),
    output:
        P.RAW,
    log:
        "logs/download.log",
    conda:
        "../envs/cnnvit.yaml"
    params:
        values=P.param_values(PARAMS.raw, "download"),
        sets=P.set_flags(BASE, PARAMS.raw, P.param_keys("download", PARAMS.profile)),
    shell:
        P.command("download") + " {params.sets} > {log} 2>&1"


rule prepare:
    input:
        P.RAW,
        P.code_deps("prepare"),
    output:
        P.PREPARED,
    log:
        "logs/prepare.log",
    conda:
        "../envs/cnnvit.yaml"
    params:
        values=P.param_values(PARAMS.raw, "prepare"),
        sets=P.set_flags(BASE, PARAMS.raw, P.param_keys("prepare", PARAMS.profile)),
    shell:
        P.command("prepare") + " {params.sets} > {log} 2>&1"

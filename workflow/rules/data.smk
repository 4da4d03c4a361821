# Data stages: download -> prepare (mirrors the download/prepare stages of dvc.yaml).


rule download:
    input:
        local_source(),
    output:
        RAW,
    conda:
        "../envs/cnnvit.yaml"
    log:
        "logs/download.log",
    params:
        cfg=stage_params(config, "download"),
        sets=cli_sets("download"),
    shell:
        "cnnvit download --out {output} {params.sets} > {log} 2>&1"


rule prepare:
    input:
        RAW,
    output:
        PREPARED,
    conda:
        "../envs/cnnvit.yaml"
    log:
        "logs/prepare.log",
    params:
        cfg=stage_params(config, "prepare"),
        sets=cli_sets("prepare"),
        out_dir=lambda w, output: str(Path(output[0]).parent),
    shell:
        "cnnvit prepare --raw {input} --out-dir {params.out_dir} {params.sets} > {log} 2>&1"

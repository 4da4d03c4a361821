# cnnvit: CNN vs ViT vs hybrid on CIFAR-10. Run `snakemake --cores all`; see README.md.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "params.yaml"


validate(config, "src/cnnvit/params.schema.json")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "report/index.html",
    default_target: True

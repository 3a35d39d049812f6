# Downloads need the internet, which GPU nodes often lack: they run on the submitting host.
localrules:
    download_model,
    download_datasets,


rule download_model:
    output:
        directory("results/{study}/download"),
    params:
        repo_id=lookup(dpath="model/repo_id", within=config, default=None),
        revision=lookup(dpath="model/revision", within=config),
    log:
        "logs/{study}/download_model.log",
    conda:
        "../envs/quantstudy.yaml"
    script:
        "../scripts/download_model.py"


rule download_datasets:
    output:
        "results/{study}/datasets/{dataset}.json",
    params:
        spec=get_dataset_spec,
    log:
        "logs/{study}/datasets/{dataset}.log",
    conda:
        "../envs/quantstudy.yaml"
    script:
        "../scripts/download_dataset.py"


rule prepare_model:
    input:
        unpack(get_prepare_input),
    output:
        directory("results/{study}/source"),
    params:
        model=lookup(dpath="model", within=config),
    log:
        "logs/{study}/prepare_model.log",
    resources:
        mem_mb=16000,
    conda:
        "../envs/quantstudy.yaml"
    script:
        "../scripts/prepare_model.py"

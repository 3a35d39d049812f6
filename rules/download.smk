# Downloads need the internet, which GPU nodes often lack: they run on the submitting host.
localrules:
    download_model,
    download_datasets,


rule download_model:
    output:
        directory("results/{study}/download"),
    log:
        "logs/{study}/download_model.log",
    conda:
        "../envs/quantstudy.yaml"
    params:
        repo_id=STUDY_CONFIG.model.repo_id,
        revision=lookup(dpath="model/revision", within=config),
    script:
        "../scripts/download_model.py"


rule download_datasets:
    output:
        "results/{study}/datasets/{dataset}.json",
    log:
        "logs/{study}/datasets/{dataset}.log",
    conda:
        "../envs/quantstudy.yaml"
    params:
        spec=get_dataset_spec,
    script:
        "../scripts/download_dataset.py"


rule prepare_model:
    input:
        unpack(get_prepare_input),
    output:
        directory("results/{study}/source"),
    log:
        "logs/{study}/prepare_model.log",
    conda:
        "../envs/quantstudy.yaml"
    resources:
        mem_mb=16000,
    params:
        model=lookup(dpath="model", within=config),
    script:
        "../scripts/prepare_model.py"

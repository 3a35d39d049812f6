rule evaluate:
    input:
        model="results/{study}/models/{arm}",
        baseline_eval=get_baseline_eval,
    output:
        json="results/{study}/eval/{arm}/{task}.json",
        samples="results/{study}/eval/{arm}/{task}.samples.jsonl",
    log:
        "logs/{study}/eval/{arm}/{task}.log",
    conda:
        "../envs/quantstudy.yaml"
    resources:
        gpu=1,
        gpu_mem_mb=get_eval_gpu_mem_mb,
        mem_mb=32000,
        runtime=240,
        # a retry after an out-of-memory halves the batch (quantstudy.evaluate)
        attempt=get_attempt,
    params:
        retry=get_retry("results/{study}/eval/{arm}/{task}.json"),
        task=get_task,
        evaluation=lookup(dpath="evaluation", within=config),
    script:
        "../scripts/evaluate.py"

rule benchmark:
    input:
        model="results/{study}/models/{arm}",
        baseline=f"results/{{study}}/models/{BASELINE}",
    output:
        "results/{study}/bench/{arm}.json",
    log:
        "logs/{study}/bench/{arm}.log",
    conda:
        "../envs/quantstudy.yaml"
    resources:
        gpu=1,
        gpu_mem_mb=get_bench_gpu_mem_mb,
        mem_mb=32000,
        runtime=60,
        attempt=get_attempt,
    params:
        retry=get_retry("results/{study}/bench/{arm}.json"),
        settings=lookup(dpath="benchmark/settings", within=config),
        baseline=BASELINE,
    script:
        "../scripts/benchmark.py"

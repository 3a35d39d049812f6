rule benchmark:
    input:
        model="results/{study}/models/{arm}",
        baseline=f"results/{{study}}/models/{BASELINE}",
    output:
        "results/{study}/bench/{arm}.json",
    params:
        settings=lookup(dpath="benchmark/settings", within=config),
        baseline=BASELINE,
    log:
        "logs/{study}/bench/{arm}.log",
    resources:
        gpu=1,
        gpu_mem_mb=get_bench_gpu_mem_mb,
        mem_mb=32000,
        runtime=60,
    conda:
        "../envs/quantstudy.yaml"
    script:
        "../scripts/benchmark.py"

rule aggregate:
    input:
        evals=get_eval_outputs(),
        models=get_model_dirs(),
    output:
        results=report(
            "results/{study}/tables/results.csv",
            caption="../report/results.rst",
            category="2. Accuracy",
            labels={"table": "scores per arm, task and metric"},
        ),
        memory=report(
            "results/{study}/tables/memory.csv",
            caption="../report/memory.rst",
            category="4. Memory",
            labels={"table": "memory per arm"},
        ),
        summary="results/{study}/tables/summary.md",
    log:
        "logs/{study}/aggregate.log",
    conda:
        "../envs/quantstudy.yaml"
    params:
        baseline=BASELINE,
    script:
        "../scripts/aggregate.py"


rule aggregate_benchmarks:
    input:
        get_bench_outputs(),
    output:
        report(
            "results/{study}/tables/benchmark.csv",
            caption="../report/benchmark.rst",
            category="3. Speed",
            labels={"table": "benchmark per arm, mode and scenario"},
        ),
    log:
        "logs/{study}/aggregate_benchmarks.log",
    conda:
        "../envs/quantstudy.yaml"
    script:
        "../scripts/aggregate_benchmarks.py"

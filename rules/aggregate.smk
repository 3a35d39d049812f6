rule aggregate:
    input:
        evals=get_eval_outputs(),
        models=get_model_dirs(),
    output:
        results=report(
            "results/{study}/tables/results.csv",
            caption="../report/results.rst",
            category="1. Results",
            labels={"table": "scores per arm, task and metric"},
        ),
        memory=report(
            "results/{study}/tables/memory.csv",
            caption="../report/memory.rst",
            category="1. Results",
            labels={"table": "memory per arm"},
        ),
        summary="results/{study}/tables/summary.md",
    params:
        baseline=BASELINE,
    log:
        "logs/{study}/aggregate.log",
    script:
        "../scripts/aggregate.py"

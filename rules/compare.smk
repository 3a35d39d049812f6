rule compare:
    input:
        **get_analysis_input(),
    output:
        decision_html=report(
            "results/{study}/report/decision.html",
            caption="../report/decision.rst",
            category="1. Decision",
            labels={"table": "decision table, comparisons and scores"},
        ),
        decision=report(
            "results/{study}/tables/decision.csv",
            caption="../report/decision_csv.rst",
            category="1. Decision",
            labels={"table": "decision table (CSV)"},
        ),
        comparisons=report(
            "results/{study}/tables/comparisons.csv",
            caption="../report/comparisons.rst",
            category="1. Decision",
            labels={"table": "comparisons with the baseline (CSV)"},
        ),
        scores=report(
            "results/{study}/tables/scores.csv",
            caption="../report/scores.rst",
            category="2. Accuracy",
            labels={"figure": "scores with 95% CI (CSV)"},
        ),
        summary="results/{study}/report/summary.rst",
        summary_md="results/{study}/tables/decision.md",
    log:
        "logs/{study}/compare.log",
    conda:
        "../envs/quantstudy.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        analysis=lookup(dpath="analysis", within=config),
        arms=lookup(dpath="arms", within=config),
        tasks=TASKS,
        baseline=BASELINE,
    script:
        "../scripts/compare.py"


rule analyse_failures:
    input:
        samples=get_analysis_input()["samples"],
    output:
        failures_html=report(
            "results/{study}/report/failures.html",
            caption="../report/failures.rst",
            category="1. Decision",
            labels={
                "table": "how the arms fail: flips, extraction, subjects, examples"
            },
        ),
        flips="results/{study}/tables/flips.csv",
        examples="results/{study}/tables/flip_examples.csv",
        extraction="results/{study}/tables/extraction.csv",
        subjects="results/{study}/tables/subjects.csv",
    log:
        "logs/{study}/analyse_failures.log",
    conda:
        "../envs/quantstudy.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        analysis=lookup(dpath="analysis", within=config),
        arms=ARMS,
        tasks=TASKS,
        baseline=BASELINE,
    script:
        "../scripts/analyse_failures.py"

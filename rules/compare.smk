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

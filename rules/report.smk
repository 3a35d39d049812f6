rule report:
    input:
        results="results/{study}/tables/results.csv",
        memory="results/{study}/tables/memory.csv",
    output:
        score_vs_memory=report(
            "results/{study}/figures/score_vs_memory.png",
            caption="../report/score_vs_memory.rst",
            category="2. Figures",
            labels={"figure": "score vs memory"},
        ),
    log:
        "logs/{study}/report.log",
    script:
        "../scripts/plot.py"

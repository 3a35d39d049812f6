rule report:
    input:
        scores="results/{study}/tables/scores.csv",
        comparisons="results/{study}/tables/comparisons.csv",
        decision="results/{study}/tables/decision.csv",
        source="results/{study}/source",
        models=get_analysis_input()["models"],
        evals=get_analysis_input()["evals"],
        bench=get_analysis_input()["bench"],
    output:
        accuracy=report(
            "results/{study}/figures/accuracy.png",
            caption="../report/accuracy.rst",
            category="2. Accuracy",
            labels={"figure": "accuracy per task with 95% CI"},
        ),
        relative_change=report(
            "results/{study}/figures/relative_change.png",
            caption="../report/relative_change.rst",
            category="2. Accuracy",
            labels={"figure": "relative change vs baseline per task"},
        ),
        ablation=report(
            "results/{study}/figures/ablation_4bit.png",
            caption="../report/ablation_4bit.rst",
            category="2. Accuracy",
            labels={"figure": "NF4 vs FP4, double quant, compute dtype"},
        ),
        score_vs_memory=report(
            "results/{study}/figures/score_vs_memory.png",
            caption="../report/score_vs_memory.rst",
            category="4. Memory",
            labels={"figure": "score vs memory (Pareto front)"},
        ),
        latency=report(
            "results/{study}/figures/latency.png",
            caption="../report/latency.rst",
            category="3. Speed",
            labels={"figure": "latency vs prompt length"},
        ),
        throughput=report(
            "results/{study}/figures/throughput.png",
            caption="../report/throughput.rst",
            category="3. Speed",
            labels={"figure": "throughput vs batch size"},
        ),
        roofline=report(
            "results/{study}/figures/roofline.png",
            caption="../report/roofline.rst",
            category="3. Speed",
            labels={"figure": "roofline fraction of decode"},
        ),
        quantize_time=report(
            "results/{study}/figures/quantize_time.png",
            caption="../report/quantize_time.rst",
            category="3. Speed",
            labels={"figure": "quantization time"},
        ),
        provenance=report(
            "results/{study}/report/provenance.html",
            caption="../report/provenance.rst",
            category="5. Provenance",
            labels={"table": "what was measured"},
        ),
        provenance_csv="results/{study}/tables/provenance.csv",
    log:
        "logs/{study}/report.log",
    conda:
        "../envs/quantstudy.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        baseline=BASELINE,
        arms=lookup(dpath="arms", within=config),
        benchmarked=is_benchmarked(),
    script:
        "../scripts/plot.py"

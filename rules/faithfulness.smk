# Agreement with the baseline on held-out text (quantstudy.faithfulness): the baseline's top-k
# next-token log-probabilities are cached once, then every arm is compared with them token by
# token (KL divergence, top-1 agreement, perplexity ratio). Only when faithfulness.enabled.


rule faithfulness_reference:
    input:
        model=f"results/{{study}}/models/{BASELINE}",
        text=get_faithfulness_text_input,
    output:
        npz=f"{FAITHFULNESS_REFERENCE}.npz",
        json=f"{FAITHFULNESS_REFERENCE}.json",
    log:
        "logs/{study}/faithfulness/reference.log",
    conda:
        "../envs/quantstudy.yaml"
    resources:
        gpu=1,
        gpu_mem_mb=get_faithfulness_gpu_mem_mb,
        mem_mb=32000,
        runtime=120,
        attempt=get_attempt,
    params:
        retry=get_retry(f"{FAITHFULNESS_REFERENCE}.json"),
        faithfulness=lookup(dpath="faithfulness", within=config),
        baseline=BASELINE,
    script:
        "../scripts/faithfulness_reference.py"


rule faithfulness:
    input:
        model="results/{study}/models/{arm}",
        reference_npz=f"{FAITHFULNESS_REFERENCE}.npz",
        reference=f"{FAITHFULNESS_REFERENCE}.json",
    output:
        json="results/{study}/faithfulness/arms/{arm}.json",
        tokens="results/{study}/faithfulness/arms/{arm}.tokens.npz",
    log:
        "logs/{study}/faithfulness/arms/{arm}.log",
    conda:
        "../envs/quantstudy.yaml"
    resources:
        gpu=1,
        gpu_mem_mb=get_faithfulness_gpu_mem_mb,
        mem_mb=32000,
        runtime=120,
        attempt=get_attempt,
    params:
        retry=get_retry("results/{study}/faithfulness/arms/{arm}.json"),
        batch_size=lookup(dpath="faithfulness/batch_size", within=config),
        alpha=lookup(dpath="analysis/alpha", within=config),
    script:
        "../scripts/faithfulness.py"


rule faithfulness_report:
    input:
        arms=get_faithfulness_outputs(),
        models=get_model_dirs(),
        reference=f"{FAITHFULNESS_REFERENCE}.json",
    output:
        table=report(
            "results/{study}/tables/faithfulness.csv",
            caption="../report/faithfulness_csv.rst",
            category="2. Accuracy",
            labels={"table": "agreement with the baseline (CSV)"},
        ),
        page=report(
            "results/{study}/report/faithfulness.html",
            caption="../report/faithfulness.rst",
            category="2. Accuracy",
            labels={"table": "agreement with the baseline"},
        ),
        kl_distribution=report(
            "results/{study}/figures/kl_distribution.png",
            caption="../report/kl_distribution.rst",
            category="2. Accuracy",
            labels={"figure": "KL divergence from the baseline per arm"},
        ),
        kl_vs_memory=report(
            "results/{study}/figures/kl_vs_memory.png",
            caption="../report/kl_vs_memory.rst",
            category="4. Memory",
            labels={"figure": "KL divergence vs memory"},
        ),
        agreement_vs_memory=report(
            "results/{study}/figures/agreement_vs_memory.png",
            caption="../report/agreement_vs_memory.rst",
            category="4. Memory",
            labels={"figure": "top-1 agreement vs memory"},
        ),
    log:
        "logs/{study}/faithfulness/report.log",
    conda:
        "../envs/quantstudy.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        arms=lookup(dpath="arms", within=config),
        baseline=BASELINE,
    script:
        "../scripts/faithfulness_report.py"

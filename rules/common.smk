import json
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)

from quantstudy import config as qconfig  # noqa: E402
from quantstudy import preflight  # noqa: E402
from quantstudy import records as qrecords  # noqa: E402

# --- config: schema (with defaults), the typed model, then the checks neither can make -------
# All of it runs while the workflow is parsed, so a bad config stops before any job starts (and
# before Snakemake removes any output to rebuild it). The typed model (quantstudy.study) checks
# every field's type, benchmark settings included; rules read it, and hand jobs the plain config
# entries as params (so the params rerun trigger sees the config as written, defaults filled).
# The preflight checks, which ask lm-eval and transformers, run in the process that plans the
# jobs only: a job's own process (SLURM, `--mode remote`) parses this file again and need not
# pay for them.
try:
    if workflow.is_main_process:
        qconfig.check_config_files(workflow.configfiles)
    qconfig.normalise(config)
    validate(config, workflow.source_path("../schemas/config.schema.yaml"))
    STUDY_CONFIG = qconfig.typed(config)
    qconfig.check(STUDY_CONFIG, root=workflow.basedir)
    if workflow.is_main_process:
        preflight.check(
            STUDY_CONFIG,
            root=workflow.basedir,
            cache_dir=Path(".snakemake/quantstudy-preflight"),
        )
except qconfig.ConfigError as e:
    raise WorkflowError(f"Invalid config: {e}")

STUDY = STUDY_CONFIG.study
ARMS = list(STUDY_CONFIG.arms)
TASKS = list(STUDY_CONFIG.tasks)
BASELINE = STUDY_CONFIG.baseline


def _alternatives(names):
    return "|".join(re.escape(n) for n in names)


# Wildcards match only what is configured, so a stray path never matches a rule.
wildcard_constraints:
    study=re.escape(STUDY),
    arm=_alternatives(ARMS),
    task=_alternatives(TASKS),


# --- targets ------------------------------------------------------------------------------
def is_benchmarked():
    return STUDY_CONFIG.benchmark.enabled


# A job that fails on its last attempt leaves a failure record as its output, so the rest of
# the study and its report finish (quantstudy.records); its `retry` param makes the next run
# run it again.
def set_job_attempts():
    """Tell the jobs how many attempts Snakemake gives each (their last records a failure).
    Called at onstart: while this file is read, Snakemake's execution settings are not set.
    """
    if workflow.is_main_process:
        os.environ[qrecords.ATTEMPTS_ENV] = str(workflow.execution_settings.retries + 1)


def get_retry(record):
    """The `retry` param of the jobs whose records lie at `record`, a pattern of wildcards; it
    changes once while the job's output is a failure record. A function of the wildcards, not
    of `output`: Snakemake's params trigger ignores params derived from input or output. Read
    once per job and kept: Snakemake evaluates params again when the job starts, after it has
    removed the job's old output."""
    seen = {}

    def retry(wildcards):
        path = record.format(**dict(wildcards.items()))
        if path not in seen:
            seen[path] = qrecords.retry_token(path)
        return seen[path]

    return retry


def get_attempt(wildcards, attempt):
    """The job's attempt, as a resource its script reads: only its last records a failure."""
    return attempt


def get_final_output():
    """The study's tables, figures and report pages (every arm, failed ones shown as such)."""
    out = [
        f"results/{STUDY}/tables/decision.csv",
        f"results/{STUDY}/report/decision.html",
        f"results/{STUDY}/report/provenance.html",
        f"results/{STUDY}/report/failures.html",
        f"results/{STUDY}/figures/score_vs_memory.png",
        f"results/{STUDY}/tables/results.csv",
        f"results/{STUDY}/tables/memory.csv",
        f"results/{STUDY}/tables/summary.md",
    ]
    if is_benchmarked():
        out.append(f"results/{STUDY}/tables/benchmark.csv")
    if is_faithfulness_measured():
        out += get_faithfulness_report_outputs()
    return out


# --- helpers for rules --------------------------------------------------------------------
def get_arm(wildcards):
    """The arm's config entry: its params, so a change to this arm reruns only this arm."""
    return config["arms"][wildcards.arm]


def get_task(wildcards):
    """The task's config entry: a change to this task reruns only this task's jobs."""
    return config["tasks"][wildcards.task]


def resolve(path, python_package=None):
    """A config path: relative ones start at the workflow's folder, as the schema says."""
    return str(qconfig.resolve_path(path, python_package, root=workflow.basedir))


def is_hub_model():
    return STUDY_CONFIG.model.source == "hub"


def get_prepare_input(wildcards):
    """The hub download for hub sources; the local files otherwise (their changes rerun it)."""
    model = STUDY_CONFIG.model
    if is_hub_model():
        return {"download": f"results/{wildcards.study}/download"}
    files = {"model": resolve(model.path, model.python_package)}
    if model.source == "random-init" and model.tokenizer is not None:
        files["tokenizer"] = resolve(
            model.tokenizer.path, model.tokenizer.python_package
        )
    return files


def calibration_of(arm):
    """The arm's typed calibration spec (GPTQ, AWQ, W8A8; a GGUF arm's importance matrix);
    None for arms that take none."""
    return getattr(STUDY_CONFIG.arms[arm], "calibration", None)


def get_calibration_input(wildcards):
    """A local calibration file, or the pre-fetched hub dataset, for arms that calibrate."""
    calib = calibration_of(wildcards.arm)
    if calib is None:
        return []
    if calib.path is not None:
        return [resolve(calib.path)]
    return [f"results/{wildcards.study}/datasets/{calibration_dataset_id(calib)}.json"]


def calibration_dataset_id(calib):
    """A file-name-safe id of a hub dataset split."""
    parts = [calib.dataset, calib.config_name or "default", calib.split]
    return "__".join(re.sub(r"[^A-Za-z0-9_.-]", "_", p) for p in parts)


def get_hub_datasets():
    """Every hub calibration dataset the study names, by id: its config entry (a plain dict)."""
    out = {}
    for arm in ARMS:
        calib = calibration_of(arm)
        if calib is not None and calib.path is None:
            out[calibration_dataset_id(calib)] = config["arms"][arm]["calibration"]
    faith = STUDY_CONFIG.faithfulness
    if is_faithfulness_measured() and faith.path is None:
        spec = {
            k: config["faithfulness"][k] for k in ("dataset", "config_name", "split")
        }
        out.setdefault(calibration_dataset_id(faith), spec)
    return out


def get_dataset_spec(wildcards):
    return get_hub_datasets()[wildcards.dataset]


def get_baseline_eval(wildcards):
    """With batch_size auto, every arm waits for the baseline's run and uses its batch size."""
    if (
        STUDY_CONFIG.tasks[wildcards.task].batch_size == "auto"
        and wildcards.arm != BASELINE
    ):
        return [f"results/{wildcards.study}/eval/{BASELINE}/{wildcards.task}.json"]
    return []


def get_eval_outputs(study=STUDY):
    return expand(
        "results/{study}/eval/{arm}/{task}.json", study=study, arm=ARMS, task=TASKS
    )


def get_bench_outputs(study=STUDY):
    return expand("results/{study}/bench/{arm}.json", study=study, arm=ARMS)


def _memory_bytes(model_dir):
    """Bytes an arm holds in memory, from its quantize.json (None before it is built)."""
    try:
        with open(f"{model_dir}/quantize.json") as f:
            return json.load(f)["memory_bytes"]["total"]
    except (FileNotFoundError, KeyError):
        return None


def _source_bytes(source_dir):
    try:
        with open(f"{source_dir}/model.safetensors.index.json") as f:
            return json.load(f)["metadata"]["total_size"]
    except (FileNotFoundError, KeyError):
        pass
    try:
        return os.path.getsize(f"{source_dir}/model.safetensors")
    except OSError:
        return None


def _mb(nbytes, factor, extra_mb, fallback_mb):
    return fallback_mb if nbytes is None else int(factor * nbytes / 2**20) + extra_mb


# GPU memory estimates (MB) for packing jobs onto GPUs (profiles/local): resources are evaluated
# when a job is ready, after its inputs were built, so they can read the models' sizes.
def get_quantize_gpu_mem_mb(wildcards, input):
    """The source in its dtype, a quantized copy, calibration activations: about 3x the source."""
    return _mb(_source_bytes(input.source), 3, 4000, 24000)


def get_eval_gpu_mem_mb(wildcards, input):
    return _mb(_memory_bytes(input.model), 1.5, 8000, 24000)


def get_bench_gpu_mem_mb(wildcards, input):
    """Both models (arm and baseline), twice over for caches and activations, plus 8 GB."""
    sizes = [_memory_bytes(input.model), _memory_bytes(input.baseline)]
    return _mb(None if None in sizes else sum(sizes), 2, 8000, 40000)


def get_model_dirs(study=STUDY):
    return expand("results/{study}/models/{arm}", study=study, arm=ARMS)


def get_analysis_input(study=STUDY):
    """What compare and report read: every configured arm's outputs (or failure records)."""
    return {
        "samples": expand(
            "results/{study}/eval/{arm}/{task}.samples.jsonl",
            study=study,
            arm=ARMS,
            task=TASKS,
        ),
        "evals": get_eval_outputs(study),
        "models": get_model_dirs(study),
        "bench": get_bench_outputs(study) if is_benchmarked() else [],
        "faithfulness": get_faithfulness_outputs(study),
    }


# --- agreement with the baseline (rules/faithfulness.smk) -----------------------------------
def is_faithfulness_measured():
    return STUDY_CONFIG.faithfulness.enabled


FAITHFULNESS_REFERENCE = "results/{study}/faithfulness/reference/reference"


def get_faithfulness_text_input(wildcards):
    """The held-out text: a local file, or the pre-fetched hub dataset split."""
    faith = STUDY_CONFIG.faithfulness
    if faith.path is not None:
        return [resolve(faith.path)]
    return [f"results/{wildcards.study}/datasets/{calibration_dataset_id(faith)}.json"]


def get_faithfulness_outputs(study=STUDY):
    """Every arm's agreement record (or failure record); none when the study measures none."""
    if not is_faithfulness_measured():
        return []
    return expand("results/{study}/faithfulness/arms/{arm}.json", study=study, arm=ARMS)


def get_faithfulness_report_outputs(study=STUDY):
    """The outputs of faithfulness_report: the table, its page and the three figures."""
    figures = ("kl_distribution", "kl_vs_memory", "agreement_vs_memory")
    return [
        f"results/{study}/tables/faithfulness.csv",
        f"results/{study}/report/faithfulness.html",
        *(f"results/{study}/figures/{name}.png" for name in figures),
    ]


def get_faithfulness_gpu_mem_mb(wildcards, input):
    """The model, plus one batch of full-vocabulary log-probabilities: about evaluate's."""
    return _mb(_memory_bytes(input.model), 1.5, 8000, 24000)

"""Snakemake entry for rule evaluate: one arm on one lm-eval task."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from quantstudy.evaluate import (  # noqa: E402
    batch_halvings,
    batch_size_for,
    earlier_attempts,
    evaluate,
    recording_attempt,
)
from quantstudy.gpus import lease  # noqa: E402
from quantstudy.records import check_inputs, quantize_record_path, recording_failure  # noqa: E402
from quantstudy.scripting import logged  # noqa: E402
from quantstudy.study import Evaluation, Task  # noqa: E402

log_path = snakemake.log[0]  # noqa: F821
attempt = int(snakemake.resources.attempt)  # noqa: F821
earlier = earlier_attempts(log_path, attempt)
halvings = batch_halvings(attempt, earlier)
baseline_eval = snakemake.input.baseline_eval  # noqa: F821
with (
    recording_failure(
        "evaluate",
        snakemake.output.json,  # noqa: F821
        arm=snakemake.wildcards.arm,  # noqa: F821
        task=snakemake.wildcards.task,  # noqa: F821
        log=log_path,
        attempt=attempt,
        retry=snakemake.params.retry,  # noqa: F821
        empty=[snakemake.output.samples],  # noqa: F821
    ),
    logged(log_path),
    recording_attempt(log_path, attempt, halvings),
):
    check_inputs(
        **{
            "quantize job": quantize_record_path(snakemake.input.model),  # noqa: F821
            "baseline's evaluation": baseline_eval[0] if baseline_eval else None,
        }
    )
    print(f"attempt {attempt}, batch halvings {halvings}, earlier attempts: {earlier}", flush=True)
    root = Path(snakemake.scriptdir).parent  # noqa: F821
    task_spec = Task.parse(snakemake.params.task, ("tasks", snakemake.wildcards.task))  # noqa: F821
    settings = Evaluation.parse(snakemake.params.evaluation, ("evaluation",))  # noqa: F821
    with lease(snakemake.resources.gpu_mem_mb):  # noqa: F821
        evaluate(
            model_dir=snakemake.input.model,  # noqa: F821
            arm=snakemake.wildcards.arm,  # noqa: F821
            task=snakemake.wildcards.task,  # noqa: F821
            task_spec=task_spec,
            batch_size=batch_size_for(task_spec, baseline_eval[0] if baseline_eval else None),
            include_path=str(root / settings.include_path),
            out_json=snakemake.output.json,  # noqa: F821
            out_samples=snakemake.output.samples,  # noqa: F821
            max_batch_size=settings.max_batch_size,
            max_length=settings.max_length,
            halvings=halvings,
            earlier_attempts=earlier,
        )

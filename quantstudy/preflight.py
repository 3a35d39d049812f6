"""Checks that need lm-eval or transformers, run once when the workflow starts, before any job.

`config.check` reads only the config and small files; the checks here ask the libraries the
jobs will use: every task is one lm-eval knows, and every GPTQ/AWQ group size divides the input
width of every layer it quantizes. Both take seconds (lm-eval indexes ~15,000 task YAMLs,
transformers is imported and the model built on the meta device), so their answers are cached
in a folder keyed by everything they depend on; a task name the cache does not know is looked
up again before it is called unknown.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ConfigError, resolve_path

if TYPE_CHECKING:
    from .study import Study

log = logging.getLogger(__name__)

# Bump when what a cached answer means changes (e.g. how layers are skipped).
CACHE_VERSION = 1

# digest of a key -> (value, computed in this process rather than read from the cache folder)
_memo: dict[str, tuple[Any, bool]] = {}


def _cached(
    cache_dir: Path | None,
    key: dict[str, Any],
    compute: Callable[[], Any],
    refresh: bool = False,
) -> Any:
    """compute(), remembered in this process and, with cache_dir, in a JSON file by key.

    refresh computes again what was read from the cache folder (not what this process computed).
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    if digest in _memo and (not refresh or _memo[digest][1]):
        return _memo[digest][0]
    path = cache_dir / f"{key['kind']}-{digest}.json" if cache_dir else None
    if not refresh and path is not None and path.is_file():
        try:
            record = json.loads(path.read_text())
            if record["key"] == key:
                _memo[digest] = (record["value"], False)
                return record["value"]
        except (OSError, ValueError, KeyError):
            pass
    value = compute()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": key, "value": value}))
            tmp.replace(path)
        except OSError as e:  # a read-only workdir: no cache, same answers
            log.warning("preflight cache not written: %s", e)
    _memo[digest] = (value, True)
    return value


# --- tasks -------------------------------------------------------------------------------------


def lm_eval_names(include_path: Path | None) -> list[str]:
    """Every task, group and tag lm-eval knows: under include_path alone, or its registry."""
    from lm_eval.tasks import TaskManager

    if include_path is None:
        return TaskManager().all_tasks
    return TaskManager(include_path=str(include_path), include_defaults=False).all_tasks


def _yaml_files(folder: Path) -> list[list]:
    """What lm-eval's index of a folder depends on: its YAML files, their sizes and mtimes."""
    files = sorted(folder.glob("**/*.yaml"))
    return [[str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def check_tasks(study: Study, root: Path | str, cache_dir: Path | None = None) -> None:
    """Every task of the study is a task, group or tag lm-eval finds, as the evaluate jobs ask it
    (evaluation.include_path, then its registry)."""
    include = resolve_path(study.evaluation.include_path, None, root)
    version = importlib.metadata.version("lm_eval")
    lookups = [
        (
            {"kind": "lm-eval-include", "lm_eval": version, "path": str(include.resolve()),
             "files": _yaml_files(include)},
            lambda: lm_eval_names(include),
        ),
        ({"kind": "lm-eval-registry", "lm_eval": version}, lambda: lm_eval_names(None)),
    ]  # fmt: skip
    known: set[str] = set()
    for refresh in (False, True):  # a cached index may predate an edit: look again, then refuse
        for key, names in lookups:
            if all(task in known for task in study.tasks):
                return
            known |= set(_cached(cache_dir, key, names, refresh=refresh))
    for task in study.tasks:
        if task not in known:
            close = difflib.get_close_matches(task, sorted(known), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(
                f"tasks.{task}: lm-eval knows no task or group {task!r} (looked in its "
                f"registry and {str(include)!r}){hint}"
            )


# --- group sizes --------------------------------------------------------------------------------


def architecture_file(study: Study, root: Path | str, workdir: Path | str = ".") -> Path | None:
    """The file that describes the model's layers: a config.json or the .gguf file.

    For a hub model: the prepared source's config.json, else the download's; None before the
    download (the prepare_model job checks then, before it writes anything).
    """
    model = study.model
    if model.source != "hub":
        path = resolve_path(model.path, model.python_package, root)
        return path / "config.json" if model.source == "local" else path
    results = Path(workdir) / "results" / study.study
    if (results / "source" / "config.json").is_file():
        return results / "source" / "config.json"
    record = results / "download" / "download.json"
    if record.is_file():
        snapshot = results / "download" / json.loads(record.read_text())["snapshot"]
        if (snapshot / "config.json").is_file():
            return snapshot / "config.json"
    return None


def _file_identity(path: Path) -> dict[str, Any]:
    """What a cached answer about a file depends on: its bytes (small) or size and mtime."""
    stat = path.stat()
    if stat.st_size <= 1 << 20:
        return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def model_linear_layers(
    path: Path, ignore: tuple[str, ...], trust_remote_code: bool = False
) -> list[tuple[str, int]]:
    """(name, input width) of every nn.Linear the arm quantizes, in module order.

    The model is built on the meta device from its config (no weights are read), and `ignore`
    skips modules exactly as quantize's verification does.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .quantize import _skipped

    if path.suffix == ".gguf":
        model_config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    else:
        where = path.parent if path.name == "config.json" else path
        model_config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    if hasattr(model_config, "quantization_config"):  # GGUF: prepare_model drops it too
        del model_config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
    return [
        (name, module.in_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not _skipped(name, ignore)
    ]


def check_group_sizes(
    study: Study,
    root: Path | str,
    workdir: Path | str = ".",
    cache_dir: Path | None = None,
) -> None:
    """Every GPTQ/AWQ arm's group_size divides the input width of every layer it quantizes."""
    from .arms import LlmCompressorArm

    arms = {a: s for a, s in study.arms.items() if isinstance(s, LlmCompressorArm)}
    if not arms:
        return
    path = architecture_file(study, root, workdir)
    if path is None or not path.is_file():  # not downloaded yet (or missing: check says so)
        return
    trust = study.model.trust_remote_code
    for arm, spec in arms.items():
        ignore = spec.ignore
        key = {
            "kind": "linear-widths",
            "version": CACHE_VERSION,
            "file": _file_identity(path),
            "transformers": importlib.metadata.version("transformers"),
            "trust_remote_code": trust,
            "ignore": list(ignore),
        }
        try:
            layers = _cached(cache_dir, key, lambda i=ignore: model_linear_layers(path, i, trust))
        except Exception as e:  # a model transformers cannot build: the jobs will say so
            log.warning(
                "arms.%s.group_size not checked: cannot build the model from %s (%s: %s)",
                arm, path, type(e).__name__, e,
            )  # fmt: skip
            continue
        group = spec.group_size
        for name, width in layers:
            if width % group:
                widths = sorted({w for _, w in layers})
                gcd = math.gcd(*widths)
                raise ConfigError(
                    f"arms.{arm}.group_size: {group} does not divide the input width of {name} "
                    f"({width}); widths here: {', '.join(map(str, widths))} (a group size that "
                    f"divides {gcd} divides them all)"
                )


def check(
    study: Study,
    root: Path | str,
    workdir: Path | str = ".",
    cache_dir: Path | None = None,
) -> None:
    """The checks of this module: tasks lm-eval knows, group sizes that fit the model, llama.cpp
    where GGUF arms need it."""
    check_tasks(study, root, cache_dir)
    check_group_sizes(study, root, workdir, cache_dir)
    check_llama_cpp(study)


def check_llama_cpp(study: Study) -> None:
    """GGUF arms need llama-cpp-python and llama.cpp's converter: say so before any job runs."""
    from .gguf import missing_runtime

    gguf = [name for name, arm in study.arms.items() if arm.method == "gguf"]
    if gguf and (problem := missing_runtime()):
        raise ConfigError(f"arms.{gguf[0]}: a gguf arm, but {problem}")

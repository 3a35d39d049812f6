"""What was measured, exactly: file hashes, package versions, the code that ran (the device a
job ran on: quantstudy.device)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import tomllib
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "torch",
    "transformers",
    "accelerate",
    "bitsandbytes",
    "llmcompressor",
    "compressed-tensors",
    "lm_eval",
    "snakemake",
    "datasets",
    "llama_cpp_python",
    "gguf",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
ARM_RECORD = "quantize.json"
"""The record beside a saved arm's weights; its `sha256` maps each weight file to its digest."""
SOURCE_RECORD = "source.json"
"""The record beside the prepared source's weights, with the same `sha256` map."""
CODE_ROOT = Path(__file__).resolve().parent.parent
"""The folder that holds the running `quantstudy/` package (the repository root in a checkout)."""
CODE_PATHS = ("quantstudy", "scripts", "rules", "Snakefile", "schemas")
"""The workflow's code, relative to CODE_ROOT: what `code_version` hashes and checks for edits."""
CODE_SUFFIXES = (".py", ".smk", ".yaml", ".yml", ".json")


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    """SHA256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dir_weight_files(directory: Path | str) -> list[Path]:
    """The weight files of a model directory, sorted."""
    directory = Path(directory)
    return sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def sha256_files(files: Iterable[Path], root: Path | str) -> dict[str, str]:
    """SHA256 of each file, keyed by its path relative to root."""
    return {str(Path(f).relative_to(root)): sha256_file(f) for f in files}


class WeightsChanged(ValueError):
    """A model directory's weight files are not the ones its record lists (changed, missing or
    added since the record was written)."""


def check_weights(
    directory: Path | str,
    expected: Mapping[str, str] | None = None,
    *,
    record: str = ARM_RECORD,
) -> dict[str, str]:
    """Raise WeightsChanged unless the directory's weight files are exactly those `expected`
    lists, with those SHA-256 digests; return the digests checked.

    `expected` defaults to the `sha256` map of the directory's `record` (file names relative to
    the directory, as `sha256_files` writes them). Every problem is named in the message: a
    changed file (path, expected and found digest), a listed file that is missing, a weight file
    that is not listed.
    """
    directory = Path(directory)
    if expected is None:
        path = directory / record
        try:
            expected = json.loads(path.read_text())["sha256"]
        except (OSError, ValueError, KeyError) as error:
            raise WeightsChanged(f"{path}: no SHA-256 record to check the weights against "
                                 f"({type(error).__name__}: {error})") from error  # fmt: skip
    found = {str(f.relative_to(directory)): f for f in dir_weight_files(directory)}
    problems = []
    for name, digest in sorted(expected.items()):
        if name not in found:
            problems.append(f"{directory / name}: missing (expected sha256 {digest})")
        elif (actual := sha256_file(found[name])) != digest:
            problems.append(f"{found[name]}: expected sha256 {digest}, found {actual}")
    for name in sorted(set(found) - set(expected)):
        problems.append(f"{found[name]}: not listed in {record} (found sha256 "
                        f"{sha256_file(found[name])})")  # fmt: skip
    if problems:
        raise WeightsChanged(
            f"the weights in {directory} are not the ones {record} lists: " + "; ".join(problems)
        )
    return dict(expected)


def disk_bytes(files: Iterable[Path]) -> int:
    """Total size of files on disk."""
    return sum(Path(f).stat().st_size for f in files)


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None where not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git(root: Path, *args: str) -> str | None:
    """A git command's stdout in root, or None where git is absent or the command fails."""
    # read-only: no index refresh, so concurrent jobs never contend for the index's lock
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        cmd = ["git", "-C", str(root), *args]
        proc = subprocess.run(cmd, capture_output=True, timeout=30, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.decode(errors="replace") if proc.returncode == 0 else None


def _package_version(root: Path) -> str | None:
    """quant-study's version: pyproject.toml's in root where there is one (the code running is
    that checkout's; an installed distribution may be another copy), else the installed
    distribution's, else the package's own `__version__` (a copy that is neither)."""
    try:
        return tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, ValueError, KeyError):
        pass
    try:
        return metadata.version("quantstudy")
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


def code_files(root: Path | str) -> list[Path]:
    """The workflow's code under root, sorted: CODE_PATHS' files with a CODE_SUFFIXES suffix (or
    named Snakefile); caches, editor backups and other stray files are not code."""
    root = Path(root)
    files = []
    for name in CODE_PATHS:
        path = root / name
        candidates = [path] if path.is_file() else path.rglob("*") if path.is_dir() else []
        files += [
            f
            for f in candidates
            if f.is_file()
            and (f.suffix in CODE_SUFFIXES or f.name == "Snakefile")
            and "__pycache__" not in f.parts
        ]
    return sorted(files)


@functools.cache
def code_version(root: Path | str = CODE_ROOT) -> dict[str, Any]:
    """The quant-study code an output was made by: {version, code_sha256, commit, dirty}.

    `code_sha256` identifies the code itself: the SHA-256 over `code_files` (path and content
    digest of each), with or without git, edited or not; two outputs with the same one were made
    by the same code, whatever commit it was (a commit that changes only docs changes nothing).
    `version` is the package's (see `_package_version`). `commit` is HEAD of the git checkout
    whose top folder is `root`, and None where git is absent or `root` is not the top of a
    checkout (an installed package inside some other repository is not that repository's code);
    `dirty` says whether a tracked file under CODE_PATHS differs from that commit (staged or
    not; None without a commit). Untracked files do not make it dirty; tasks, configs and envs
    are not code here: the outputs record the config, lm-eval's task configs and package
    versions themselves. Computed once per process.
    """
    root = Path(root).resolve()
    digests = sha256_files(code_files(root), root)
    record: dict[str, Any] = {
        "version": _package_version(root),
        "code_sha256": hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest(),
        "commit": None,
        "dirty": None,
    }
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != root:
        return record
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    if commit is not None and status is not None:
        record.update(commit=commit.strip(), dirty=bool(status.strip()))
    return record


def _commit_text(record: Mapping[str, Any]) -> str:
    """Where a code version came from: "commit 1a2b3c4d5e6f" (+ " edited"), or no checkout."""
    if not record.get("commit"):
        return "not from a git checkout"
    return f"commit {record['commit'][:12]}" + (" edited" if record.get("dirty") else "")


def _code_text(record: Mapping[str, Any]) -> str:
    """Which code: "0.1.0, code 1a2b3c4d5e6f" (version, start of code_sha256)."""
    return f"{record.get('version') or 'unknown version'}, code {record.get('code_sha256')!s:.12}"


def code_label(record: Mapping[str, Any] | None) -> str:
    """A code version in a few words: "0.1.0, code 1a2b3c4d5e6f (commit 5f6e7d8c9b0a edited)"."""
    return f"{_code_text(record)} ({_commit_text(record)})" if record else "not recorded"


def code_versions(outputs: Mapping[str, Mapping[str, Any] | None]) -> dict[str, list[str]]:
    """{code version: [output names]}: which outputs came from which code, from each record's
    `code_version` ("not recorded" for outputs written before it was recorded).

    Outputs of one code (version and code_sha256) share one entry, whichever commits they were
    made at; its label lists those commits.
    """
    groups: dict[Any, list[tuple[str, Mapping[str, Any] | None]]] = {}
    for name, rec in outputs.items():
        version = (rec or {}).get("code_version")
        key = (version.get("version"), version.get("code_sha256")) if version else None
        groups.setdefault(key, []).append((name, version))
    out: dict[str, list[str]] = {}
    for members in groups.values():
        first = members[0][1]
        label = "not recorded"
        if first:
            commits = sorted({_commit_text(v) for _, v in members if v})
            label = f"{_code_text(first)} ({'; '.join(commits)})"
        out[label] = [name for name, _ in members]
    return out


def mixed_code_warning(versions: Mapping[str, list[str]]) -> str:
    """One sentence when the outputs came from more than one code version, else ""."""
    if len(versions) <= 1:
        return ""
    return (
        f"Warning: these outputs were made by {len(versions)} different versions of quant-study's "
        "code (the provenance page lists which output came from which); rerun the stale ones."
    )


def write_json(path: Path | str, obj: Any) -> None:
    """Write JSON with sorted keys and a trailing newline, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

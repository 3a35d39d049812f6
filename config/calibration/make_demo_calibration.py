"""Write config/calibration/demo.txt: English prose for the demo's GPTQ/AWQ calibration.

No downloads: the text is the documentation of Python's standard library, one paragraph per
line, taken from a fixed list of modules in a fixed order. The committed file is the one the
demo uses; this script says where it came from and re-makes it.
"""

import argparse
import importlib
import inspect
import re
from pathlib import Path

MODULES = [
    "argparse", "asyncio", "calendar", "collections", "configparser", "contextlib", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools",
    "gzip", "heapq", "html", "http.client", "inspect", "io", "itertools", "json", "logging",
    "mailbox", "pathlib", "pickle", "random", "re", "shutil", "socket", "sqlite3", "statistics",
    "string", "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest", "urllib",
    "uuid", "warnings", "xml.dom", "zipfile",
]  # fmt: skip


def paragraphs(min_chars: int = 200, modules: list[str] = MODULES) -> list[str]:
    """Docstring paragraphs of the modules and their public members, whitespace collapsed."""
    out, seen = [], set()
    for name in modules:
        mod = importlib.import_module(name)
        objs = [mod] + [getattr(mod, a) for a in sorted(dir(mod)) if not a.startswith("_")]
        for obj in objs:
            doc = (
                inspect.getdoc(obj)
                if (inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj))
                else None
            )
            for para in re.split(r"\n\s*\n", doc or ""):
                text = " ".join(para.split())
                if (
                    len(text) >= min_chars
                    and not text.startswith((">>>", "-", "*"))
                    and text not in seen
                ):
                    seen.add(text)
                    out.append(text)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(Path(__file__).with_name("demo.txt")))
    args = parser.parse_args()
    paras = paragraphs()
    Path(args.out).write_text("\n".join(paras) + "\n")
    print(f"{len(paras)} paragraphs -> {args.out}")

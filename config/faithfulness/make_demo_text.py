"""Write config/faithfulness/demo.txt: held-out text for the demo's agreement with the baseline.

No downloads: like the calibration text (config/calibration/make_demo_calibration.py, whose
paragraph extraction this reuses) it is the documentation of Python's standard library, but of
other modules, and any paragraph that is also in the calibration text is left out, so the
GPTQ/AWQ arms are not measured on what they were calibrated on. One paragraph per line, the
first `--paragraphs` in a fixed order. The committed file is the one the demo uses.
"""

import argparse
import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
CALIBRATION = HERE.parent / "calibration"
MODULES = [
    "abc", "base64", "bisect", "codecs", "copy", "fnmatch", "ftplib", "glob", "hashlib", "hmac",
    "locale", "numbers", "operator", "pprint", "queue", "sched", "secrets", "shlex", "smtplib",
    "tempfile", "timeit", "traceback", "weakref", "zlib",
]  # fmt: skip


def heldout_paragraphs(limit: int) -> list[str]:
    """The first `limit` paragraphs of MODULES' documentation not in the calibration text."""
    spec = importlib.util.spec_from_file_location("calib", CALIBRATION / "make_demo_calibration.py")
    calib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(calib)
    assert not set(MODULES) & set(calib.MODULES), "held-out modules must not be calibration's"
    seen = set((CALIBRATION / "demo.txt").read_text().splitlines())
    return [p for p in calib.paragraphs(modules=MODULES) if p not in seen][:limit]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(HERE / "demo.txt"))
    parser.add_argument("--paragraphs", type=int, default=40)
    args = parser.parse_args()
    paras = heldout_paragraphs(args.paragraphs)
    Path(args.out).write_text("\n".join(paras) + "\n")
    print(f"{len(paras)} paragraphs -> {args.out}")

"""The report read back as a reader sees it: headless Chromium renders it (test helper).

Only the tests use this: they open `snakemake --report`'s HTML in a browser that touches no
network and check that the decision table and every figure are there.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
"""Flags for a headless Chromium that touches no network (and may run as root)."""

# Run inside the report once its app has rendered: read the first screen, then open every result
# as a reader would (images through the app's own view, HTML pages decoded from their data URI),
# and write what was seen as JSON into <pre id="report-check">.
_CHECK_SCRIPT = """
<script>
window.addEventListener("load", () => setTimeout(async () => {
  const pre = document.createElement("pre");
  pre.id = "report-check";
  const check = {results: {}, errors: []};
  const write = () => { pre.textContent = JSON.stringify(check); };
  document.body.appendChild(pre);
  const wait = (ms) => new Promise((r) => setTimeout(r, ms));
  try {
    const text = (el) => (el ? el.innerText : null);
    const prose = document.querySelector(".prose");
    const table = prose ? prose.querySelector("table") : null;
    check.front = {
      text: text(prose),
      table: table ? [...table.querySelectorAll("tr")].map(
        (tr) => [...tr.querySelectorAll("th,td")].map((c) => c.innerText.trim())) : null,
    };
    write();
    for (const [path, entry] of Object.entries(results)) {
      const seen = {name: entry.name, mime: entry.mime_type, labels: entry.labels,
                    caption: entry.caption};
      check.results[path] = seen;
      if (entry.mime_type.startsWith("image/")) {
        app.setView({content: "img", contentPath: entry.data_uri, resultPath: path});
        await wait(200);
        const img = [...document.querySelectorAll("img")].find((i) => i.src === entry.data_uri);
        seen.shown = Boolean(img);
        seen.complete = img ? img.complete : false;
        seen.width = img ? img.naturalWidth : 0;
        seen.height = img ? img.naturalHeight : 0;
      } else if (entry.mime_type === "text/html") {
        app.setView({content: "html", contentPath: entry.data_uri, resultPath: path});
        await wait(200);
        seen.shown = [...document.querySelectorAll("iframe")].some((f) => f.src === entry.data_uri);
        const b64 = entry.data_uri.split(",")[1];
        const html = new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
        seen.tables = (html.match(/<table/g) || []).length;
        seen.text = new DOMParser().parseFromString(html, "text/html").body.innerText;
      }
      write();
    }
  } catch (e) {
    check.errors.push(String(e) + " " + (e.stack || ""));
  }
  check.done = true;
  write();
}, 500));
</script>
"""


def _chromium(args: Sequence[str], user_data_dir: Path | str, timeout: float = 180) -> str:
    """Run headless Chromium with a fresh profile; its stdout."""
    exe = (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )
    if exe is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def screenshot(
    report_html: Path | str,
    png: Path | str,
    workdir: Path | str,
    size: tuple[int, int] = (1440, 900),
) -> Path:
    """A PNG of the report's first screen, as a browser window of `size` shows it."""
    workdir = Path(workdir)
    _chromium(
        [f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=15000",
         f"--screenshot={Path(png).resolve()}", Path(report_html).resolve().as_uri()],
        workdir / "chromium-profile-shot",
    )  # fmt: skip
    return Path(png)


def rendered_check(report_html: Path | str, workdir: Path | str) -> dict[str, Any]:
    """What a reader sees in the report: its first screen and every result opened in turn.

    A copy of the report gets a script that, once the app has rendered, records the front page's
    text and table, then opens each result through the app (images must decode to a nonzero
    size; HTML pages are decoded from their data URI). Chromium prints the resulting DOM, from
    which the JSON record is read.
    """
    workdir = Path(workdir)
    page = Path(report_html).read_text()
    probe = workdir / "report-probe.html"
    cut = page.rfind("</body>")
    probe.write_text(page[:cut] + _CHECK_SCRIPT + page[cut:] if cut >= 0 else page + _CHECK_SCRIPT)
    dom = _chromium(
        ["--virtual-time-budget=60000", "--dump-dom", probe.resolve().as_uri()],
        workdir / "chromium-profile-dom",
    )
    match = re.search(r'<pre id="report-check">(.*?)</pre>', dom, re.S)
    if not match:
        raise RuntimeError("the report did not render (no check record in the DOM)")
    check = json.loads(html.unescape(match.group(1)))
    if check.get("errors") or not check.get("done"):
        raise RuntimeError(f"checking the rendered report failed: {check.get('errors')}")
    return check

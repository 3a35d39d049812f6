"""The config reference (docs/configuration.md), generated from schemas/config.schema.yaml.

`python -m quantstudy.schema_doc --write` rewrites the block between docs/configuration.md's
`config-reference` markers; a test fails when the two drift apart.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from .config import SCHEMA

REFERENCE = SCHEMA.parent.parent / "docs" / "configuration.md"
BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref:
        target = schema
        for part in ref.lstrip("#/").split("/"):
            target = target[part]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(schema, merged) if "$ref" in target else merged
    return node


def _type(node: dict[str, Any]) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    if "oneOf" in node:
        return " or ".join(_type(n) for n in node["oneOf"])
    t = node.get("type", "")
    return "/".join(t) if isinstance(t, list) else str(t)


def _default(node: dict[str, Any]) -> str:
    if "default" not in node:
        return ""
    return f"`{json.dumps(node['default'])}`"


def _rows(schema: dict[str, Any], node: dict[str, Any], prefix: str) -> list[str]:
    node = _resolve(schema, node)
    rows = []
    for name, sub in node.get("properties", {}).items():
        sub = _resolve(schema, sub)
        path = f"{prefix}{name}"
        desc = " ".join(str(sub.get("description", "")).split())
        rows.append(f"| `{path}` | {_type(sub)} | {_default(sub)} | {desc} |")
        if "properties" in sub and name not in ("method",):
            rows += _rows(schema, sub, path + ".")
    return rows


def reference_markdown(schema: dict[str, Any]) -> str:
    """Tables of every config field: top level, model, each arm method, tasks, evaluation,
    task families."""
    head = "| field | type | default | meaning |\n|---|---|---|---|"
    out = [
        "### Top level",
        head,
        *_rows(
            schema,
            {
                "properties": {
                    k: v
                    for k, v in schema["properties"].items()
                    if k not in ("model", "arms", "tasks", "evaluation")
                }
            },
            "",
        ),
    ]
    out += ["", "### `model`", head, *_rows(schema, schema["$defs"]["model"], "model.")]
    methods = []  # (label, $defs key) of each method, in the schema's order
    for case in schema["$defs"]["arm"]["allOf"]:
        method = case["if"]["properties"]["method"]
        names = method.get("enum") or [method["const"]]
        methods.append((" / ".join(names), case["then"]["$ref"].rsplit("/", 1)[-1]))
    arm_desc = " ".join(schema["properties"]["arms"]["description"].split())
    out += ["", "### `arms.<name>`", "", arm_desc]
    for label, key in methods:
        out += ["", f"#### method `{label}`", head, *_rows(schema, schema["$defs"][key], "")]
    out += [
        "",
        "### `tasks.<name>`",
        "",
        " ".join(schema["properties"]["tasks"]["description"].split()),
    ]
    out += ["", head, *_rows(schema, schema["$defs"]["task"], "")]
    out += [
        "",
        "### `evaluation`",
        head,
        *_rows(schema, schema["properties"]["evaluation"], "evaluation."),
    ]
    families = schema["properties"]["analysis"]["properties"]["families"]
    out += [
        "",
        "### `analysis.families.<name>`",
        head,
        *_rows(schema, families["additionalProperties"], ""),
    ]
    return "\n".join(out) + "\n"


def write_reference(page: Path = REFERENCE) -> None:
    """Replace the page's generated block with the current reference."""
    text = page.read_text()
    before, rest = text.split(BEGIN)
    _, after = rest.split(END)
    schema = yaml.safe_load(SCHEMA.read_text())
    page.write_text(f"{before}{BEGIN}\n{reference_markdown(schema)}{END}{after}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--write", action="store_true", help="rewrite docs/configuration.md's reference block"
    )
    args = parser.parse_args()
    if args.write:
        write_reference()
    else:
        print(reference_markdown(yaml.safe_load(SCHEMA.read_text())))

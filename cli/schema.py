"""The JSON contract of `gpuplan estimate --json`, generated from the pydantic models.

`python -m cli.schema` prints the JSON schema; `--markdown` prints the field table in the README
(tests/test_readme.py checks that the README carries the current table).
"""

from __future__ import annotations

import json
import sys

from planner.estimate import Estimate


def _rows(schema: dict, defs: dict, prefix: str = ""):
    for name, prop in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        ref = prop.get("$ref") or next((a.get("$ref") for a in prop.get("anyOf", []) if "$ref" in a), None)
        kinds = [a.get("type", "object") for a in prop.get("anyOf", [])] or [prop.get("type", "object")]
        yield path, " or ".join(kinds), prop.get("description", "")
        if ref:
            yield from _rows(defs[ref.split("/")[-1]], defs, path + ".")


def markdown_table() -> str:
    schema = Estimate.model_json_schema(mode="serialization")
    lines = ["| field | type | meaning |", "|---|---|---|"]
    for path, kind, text in _rows(schema, schema.get("$defs", {})):
        lines.append(f"| `{path}` | {kind} | {text.replace('|', '/')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table() if "--markdown" in sys.argv else json.dumps(Estimate.model_json_schema(mode="serialization"), indent=2))

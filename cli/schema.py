"""The JSON contract of `gpuplan estimate --json`, generated from the pydantic models.

`python -m cli.schema` prints the JSON schema; `--markdown` prints the field table in the README
(tests/test_readme.py checks that the README carries the current table).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


def update_readme(path: Path = Path(__file__).resolve().parents[1] / "README.md") -> None:
    text = path.read_text()
    start = text.index("<!-- schema:start -->") + len("<!-- schema:start -->")
    end = text.index("<!-- schema:end -->")
    path.write_text(text[:start] + "\n" + markdown_table() + "\n" + text[end:])


if __name__ == "__main__":
    if "--update-readme" in sys.argv:
        update_readme()
    elif "--markdown" in sys.argv:
        print(markdown_table())
    else:
        print(json.dumps(Estimate.model_json_schema(mode="serialization"), indent=2))

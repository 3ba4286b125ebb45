"""The README documents the current JSON contract and the commands CI runs."""

from pathlib import Path

from cli.schema import markdown_table

ROOT = Path(__file__).resolve().parents[1]


def test_readme_schema_table_is_current():
    text = (ROOT / "README.md").read_text()
    start, end = text.index("<!-- schema:start -->"), text.index("<!-- schema:end -->")
    assert text[start:end].split("\n", 1)[1].strip() == markdown_table().strip(), \
        "regenerate with: python -m cli.schema --update-readme"


def test_ci_runs_the_readme_test_command():
    command = "python -m pytest -q"
    assert command in (ROOT / "README.md").read_text()
    assert (ROOT / ".ci/run").read_text().strip().splitlines()[-1] == command

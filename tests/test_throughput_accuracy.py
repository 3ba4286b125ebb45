"""Predicted vs published throughput (benchmarks/accuracy_throughput.py).

Tolerances (the issue's acceptance criteria and why each is what it is):
- median |error| <= 15% over every expressible row: the issue's figure; published runs of one
  configuration on different software stacks differ by 10-30% (torchtune §2.2: torch.compile alone
  is +27%), which no hardware model can see.
- <= 35% for every row of the sections calibration.md grades (§2 torchtune A-, §3 Qwen3 A, §7
  AnswerDotAI A) whose settings are published: the issue's figure.
- <= 45% for the specified rows of the sections without a grade (§12 NeMo/llm-foundry, formulas.md
  §2.2): a regression guard. The worst is MF-03 (+41%), an outlier of its own series: at 8192 tokens
  MPT-30b reports 29.9% MFU against 35.9% (4096) and 38.1% (2048), which implies attention at 8% of
  peak where every other long-sequence H100 row (MF-06, MF-09, LF-02) implies about 18%.
- the model beats the 6N-at-40%-MFU shortcut on the median: the reason it exists.
"""

from benchmarks.accuracy_throughput import EXCLUDED, all_rows, median_abs, throughput_rows

ROWS = throughput_rows()


def test_median_error_within_15_percent():
    assert median_abs(ROWS) <= 0.15


def test_graded_sections_within_35_percent():
    bad = [(r["id"], round(r["error"], 3)) for r in ROWS if r["trusted"] and abs(r["error"]) > 0.35]
    assert not bad


def test_ungraded_specified_rows_within_45_percent():
    bad = [(r["id"], round(r["error"], 3)) for r in ROWS
           if r["specified"] and not r["trusted"] and abs(r["error"]) > 0.45]
    assert not bad


def test_model_beats_the_shortcut():
    assert median_abs(ROWS) < 0.5 * median_abs(ROWS, "shortcut_error")


def test_rows_cover_every_source_and_exclusions_are_stated():
    sections = {r["section"] for r in ROWS}
    for needle in ("torchtune", "Qwen3", "AnswerDotAI", "NeMo", "§12.4 llm-foundry", "formulas"):
        assert any(needle in s for s in sections)
    ids = [r.id for r in all_rows()]
    assert len(ids) == len(set(ids)) and len(ids) > 100
    assert all(why for why in EXCLUDED.values())

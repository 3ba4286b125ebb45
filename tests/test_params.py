"""Exact parameter counts: golden values are the checkpoint counts recorded by keras-hub from the
real Qwen3 weights (reference/qwen3.md §5.3), independent of our arithmetic."""

import pytest

from catalog import default_catalog
from planner.params import count_params, lora_params

# name: (total, active) — keras-hub qwen3_presets.py / qwen3_moe_presets.py; active from qwen3.md §5.3
GOLDEN = {
    "Qwen3-0.6B": (596_049_920, 596_049_920),
    "Qwen3-1.7B": (1_720_574_976, 1_720_574_976),
    "Qwen3-4B": (4_022_468_096, 4_022_468_096),
    "Qwen3-8B": (8_190_735_360, 8_190_735_360),
    "Qwen3-14B": (14_768_307_200, 14_768_307_200),
    "Qwen3-32B": (32_762_123_264, 32_762_123_264),
    "Qwen3-30B-A3B": (30_532_122_624, 3_353_032_704),
    "Qwen3-235B-A22B": (235_093_634_560, 22_190_763_520),
}


@pytest.mark.parametrize("name", GOLDEN)
def test_qwen3_counts_are_exact(name):
    pc = count_params(default_catalog().model(name))
    assert (pc.total, pc.active) == GOLDEN[name]


def test_non_embedding_matches_model_cards():
    # Qwen card convention: non-embedding excludes the embedding and the untied head (qwen3.md §5)
    assert count_params(default_catalog().model("qwen3-30b")).non_embedding == 29_909_792_768
    assert count_params(default_catalog().model("qwen3-8b")).non_embedding == 6_946_075_648


def test_reference_models_match_published_counts():
    # Qwen2.5-7B: HF API count 7,615,616,512 (qwen3.md §3); Llama-2-7B: 6,738,415,616 (HF model card)
    assert count_params(default_catalog().model("qwen2.5-7b")).total == 7_615_616_512
    assert count_params(default_catalog().model("llama-2-7b")).total == 6_738_415_616


def test_lora_params_follow_r_times_in_plus_out():
    m = default_catalog().model("qwen3-8b")
    # q_proj 4096->4096 and v_proj 4096->1024, rank 8, 36 layers: 8*(4096+4096) + 8*(4096+1024)
    assert lora_params(m, 8, ("q_proj", "v_proj")) == 36 * (8 * 8192 + 8 * 5120)

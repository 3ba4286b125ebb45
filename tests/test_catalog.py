"""Catalog loading, name resolution and Hugging Face config parsing."""

import json

import pytest

from catalog import CatalogError, default_catalog, load_catalog, parse_hf_config
from planner.params import count_params


def test_aliases_resolve():
    cat = default_catalog()
    assert cat.model("qwen3-235b").name == "Qwen3-235B-A22B"
    assert cat.model("qwen3-30b").name == "Qwen3-30B-A3B"
    assert cat.gpu("a100-80g").name == "a100-80g-sxm"
    assert cat.gpu("H100").name == "h100-sxm"
    assert cat.gpu("rtx4090").name == "rtx4090"


def test_unknown_gpu_suggests_close_names():
    with pytest.raises(CatalogError, match="did you mean.*h100"):
        default_catalog().gpu("h10")


def test_at_least_15_gpus_with_sources_and_no_bf16_on_v100_t4():
    gpus = default_catalog().gpus
    assert len(gpus) >= 15
    assert gpus["v100-32g"].bf16_tflops is None and gpus["t4"].bf16_tflops is None
    for g in gpus.values():
        assert g.price_hourly.source and g.price_hourly.date and g.price_purchase.source


def test_hf_config_of_qwen3_gives_exact_counts(tmp_path):
    # the verbatim Qwen3-8B config.json (alibaba/InferSim hf_configs/qwen3-8B_config.json)
    cfg = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096,
           "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
           "intermediate_size": 12288, "vocab_size": 151936, "tie_word_embeddings": False,
           "attention_bias": False, "max_position_embeddings": 40960}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert count_params(default_catalog().model(str(path))).total == 8_190_735_360


def test_hf_config_errors_name_the_field(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "qwen3", "hidden_size": 1024}))
    with pytest.raises(CatalogError, match="num_attention_heads"):
        default_catalog().model(str(path))
    with pytest.raises(CatalogError, match="model_type"):
        parse_hf_config({"model_type": "gpt2"})
    with pytest.raises(CatalogError, match="hidden_size"):
        parse_hf_config({"model_type": "llama", "hidden_size": -4, "num_attention_heads": 8,
                         "num_hidden_layers": 2, "vocab_size": 10, "intermediate_size": 8})


def test_user_catalog_overrides_price(tmp_path):
    text = (
        '[[price]]\nname = "a100-80g"\n[price.price_hourly]\nusd = 0.99\nsource = "our contract"\ndate = "2026-12"\n'
    )
    path = tmp_path / "extra.toml"
    path.write_text(text)
    cat = load_catalog(path)
    assert cat.gpu("a100-80g").price_hourly.usd == 0.99
    assert default_catalog().gpu("a100-80g").price_hourly.usd != 0.99  # the default is untouched

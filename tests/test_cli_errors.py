"""Bad input: one line on stderr, exit code 2, no traceback (the brief's standard)."""

import json
import subprocess
import sys

import pytest

BASE = ["estimate", "--model", "qwen3-0.6b", "--gpu", "a100-80g"]


def run(args):
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True)


def assert_one_line_error(proc, needle):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[0]


@pytest.mark.parametrize("args,needle", [
    (["estimate", "--model", "qwen4-7b", "--gpu", "a100-80g"], "unknown model"),
    (["estimate", "--model", "qwen3-8b", "--gpu", "a100-81g"], "did you mean"),
    ([*BASE, "--micro-batch", "0"], "micro-batch"),
    ([*BASE, "--seq-len", "-5"], "seq-len"),
    ([*BASE, "--workload", "qlora", "--weights", "bf16"], "qlora needs quantized"),
    ([*BASE, "--num-gpus", "2", "--tp", "3"], "multiple of tp*pp"),
    ([*BASE, "--workload", "serve", "--zero", "3"], "--zero applies to training"),
    ([*BASE, "--lora-targets", "q_proj,foo", "--workload", "lora"], "foo"),
])
def test_bad_input(args, needle):
    assert_one_line_error(run(args), needle)


def test_tp_must_divide_heads():
    # Qwen3-0.6B has 16 query heads and 8 KV heads: tp=3 cannot split them
    assert_one_line_error(run([*BASE, "--num-gpus", "3", "--tp", "3"]), "heads")


def test_malformed_config_names_field(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "qwen3", "hidden_size": 1024, "num_attention_heads": 16,
                                "num_hidden_layers": "many", "vocab_size": 10, "intermediate_size": 8}))
    assert_one_line_error(run(["estimate", "--model", str(path), "--gpu", "h100"]), "num_hidden_layers")
    path.write_text("{not json")
    assert_one_line_error(run(["estimate", "--model", str(path), "--gpu", "h100"]), "not valid JSON")


def test_bad_user_catalog(tmp_path):
    path = tmp_path / "extra.toml"
    path.write_text('[[price]]\nname = "a100-80g"\n[price.price_hourly]\nusd = -1\nsource = "quote"\ndate = "2026"\n')
    assert_one_line_error(run([*BASE, "--catalog", str(path)]), "usd")


def test_good_input_prints_json():
    proc = run([*BASE, "--json"])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["model"]["params_total"] == 596_049_920

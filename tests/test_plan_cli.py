"""`plan` and `sweep` as a user runs them: the card command, the infeasible example, JSON, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli.plan_cmd import plan, sweep

WORKLOADS = ("serve", "qlora", "lora", "full", "pretrain")


def run(command, *args):
    result = CliRunner().invoke(command, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def run_process(*args) -> subprocess.CompletedProcess:
    """Through cli.main's wrapper, as the `plan` console script runs: one-line errors, exit 2."""
    code = "import sys; from cli.main import _run; from cli.plan_cmd import plan; _run(plan, sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_card_command_plans_every_workload():
    out = run(plan, "--model", "qwen3-235b", "--gpus", "a100-80g")
    for w in WORKLOADS:
        assert f"\n{w}: " in out                       # one detail section per workload
    assert out.count("OPTIMAL") >= 5
    assert "sequence length 4096" in out and "32 concurrent sequences" in out   # defaults are stated
    assert "Per-GPU memory" in out and "usable memory" in out


def test_card_command_json():
    doc = json.loads(run(plan, "--model", "qwen3-235b", "--gpus", "a100-80g", "--json"))
    assert [p["workload"] for p in doc["plans"]] == list(WORKLOADS)
    for p in doc["plans"]:
        assert p["solver"]["status"] == "OPTIMAL"
        assert p["solver"]["value"] == p["solver"]["bound"]
        assert p["memory"]["fits"] and p["memory"]["total"] <= p["memory"]["capacity"]
        assert p["throughput"]["tokens_per_s"] > 0
        assert p["cost"]["usd_per_hour"] == pytest.approx(p["solver"]["value"])
        assert p["strategy"]["num_gpus"] >= 1 and p["gpu"] == "a100-80g-sxm"


def test_does_not_fit_says_what_would():
    args = ("--model", "qwen3-0.6b", "--gpus", "rtx4090:1", "--workload", "full", "--seq-len", "32768")
    out = run(plan, *args)
    assert "INFEASIBLE" in out and "does not fit" in out
    assert "loss=fused" in out                                  # the smallest fix
    assert "a100" in out or "h100" in out or "l40s" in out     # a larger GPU
    doc = json.loads(run(plan, *args, "--json"))
    diagnosis = doc["plans"][0]["solver"]["diagnosis"]
    assert diagnosis["fixes"][0]["changes"] == {"loss": "fused"}
    assert diagnosis["over_capacity_mib"] > 0


def test_top_and_pins():
    doc = json.loads(run(plan, "--model", "qwen3-8b", "--gpus", "h100:8", "--workload", "lora", "--top", "2",
                         "--checkpointing", "none", "--json"))
    assert [p["rank"] for p in doc["plans"]] == [1, 2]
    assert all(p["strategy"]["checkpointing"] == "none" for p in doc["plans"])


def test_limits_and_job_objective():
    doc = json.loads(run(plan, "--model", "qwen3-1.7b", "--gpus", "a100-80g", "--workload", "full",
                         "--objective", "job", "--tokens", "1e9", "--deadline", "4", "--json"))
    p = doc["plans"][0]
    assert p["solver"]["status"] == "OPTIMAL" and p["cost"]["job_hours"] <= 4


def test_bad_input_is_one_line_exit_2():
    for args, needle in ((("--model", "qwen3-8b", "--gpus", "a100-80:4"), "did you mean"),
                         (("--model", "qwen3-8b", "--gpus", "a100-80g:x"), "NAME:COUNT"),
                         (("--model", "qwen3-9b", "--gpus", "h100"), "unknown model"),
                         (("--model", "qwen3-8b", "--gpus", "h100", "--workload", "serve", "--zero", "3"), "--zero")):
        r = run_process(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and needle in r.stderr and "Traceback" not in r.stderr


def test_sweep_json_and_csv():
    args = ("--model", "qwen3-0.6b", "--gpus", "h100,t4", "--workload", "serve", "--workload", "full", "--jobs", "1")
    cells = json.loads(run(sweep, *args, "--json"))["cells"]
    assert [(c["gpu"], c["workload"]) for c in cells] == [("h100-sxm", "serve"), ("h100-sxm", "full"),
                                                          ("t4", "serve"), ("t4", "full")]
    assert all(c["status"] == "OPTIMAL" and c["num_gpus"] >= 1 for c in cells)
    csv_out = run(sweep, *args, "--csv").splitlines()
    assert csv_out[0].startswith("model,gpu,workload,status,num_gpus") and len(csv_out) == 5

"""The coefficient tables against `estimate`: for random strategies, the tables' memory (rounded up
per term) is never below estimate_memory's and within a few MiB of it; their GPU time per token is
never below estimate_throughput's and within 1% plus the rounding of its integer units."""

from __future__ import annotations

import math

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from catalog import default_catalog
from planner.exhaustive import table_memory, table_time
from planner.memory import estimate_memory
from planner.solve_time import FINE, TIME_UNIT
from planner.speed import estimate_throughput
from planner.strategy import Strategy, StrategyError, check_against

CAT = default_catalog()
MODELS = ["qwen3-0.6b", "qwen3-4b", "qwen3-14b", "qwen3-30b-a3b", "qwen3-235b"]
GPUS = ["a100-80g", "h100", "rtx4090", "t4", "mi300x"]
MIB = 2 ** 20
# rounding allowance per phase: every state term, the activation term and the per-GPU
# micro-batch terms are each rounded up to a MiB (plus KiParam and per-byte roundings)
SLACK_MIB = 6


@st.composite
def configurations(draw):
    m = CAT.model(draw(st.sampled_from(MODELS)))
    gpu = CAT.gpu(draw(st.sampled_from(GPUS)))
    workload = draw(st.sampled_from(["pretrain", "full", "lora", "qlora", "serve"]))
    tp = draw(st.sampled_from([t for t in (1, 2, 4, 8) if t <= gpu.gpus_per_node
                               and m.num_attention_heads % t == 0
                               and (m.num_key_value_heads % t == 0 or t % m.num_key_value_heads == 0)]))
    pp = draw(st.sampled_from([1, 2, 4]))
    ep = draw(st.sampled_from([1, 2, 4] if m.is_moe else [1]))
    dp = ep * draw(st.sampled_from([1, 2, 4]))   # powers of two: part of a node or whole nodes
    fields = dict(workload=workload, num_gpus=tp * pp * dp, tp=tp, pp=pp, ep=ep)
    if workload == "serve":
        fields.update(weights=draw(st.sampled_from(["bf16", "fp8", "int8", "int4"])),
                      kv_cache=draw(st.sampled_from(["bf16", "fp8"])),
                      concurrency=draw(st.sampled_from([1, 7, 32])), context=draw(st.sampled_from([512, 8192])))
    else:
        fields.update(zero=draw(st.integers(0, 3)),
                      precision=draw(st.sampled_from(["bf16-mixed", "amp", "bf16", "fp32", "fp8-mixed"])),
                      optimizer=draw(st.sampled_from(["adamw", "adamw-8bit", "sgd"])),
                      offload=draw(st.booleans()), checkpointing=draw(st.sampled_from(["none", "selective", "full"])),
                      loss=draw(st.sampled_from(["unfused", "fused"])), micro_batch=draw(st.sampled_from([1, 2, 8])),
                      seq_len=draw(st.sampled_from([256, 4096, 32768])), grad_accum=draw(st.sampled_from([1, 3, 16])),
                      lora_rank=draw(st.sampled_from([8, 64])))
        if workload == "qlora":
            fields["weights"] = draw(st.sampled_from(["nf4", "int4", "int8", "fp8"]))
    return m, gpu, fields


@settings(max_examples=150, deadline=None)
@given(configurations())
def test_tables_bound_estimate_memory(case):
    m, gpu, fields = case
    try:
        s = Strategy(**fields)
        check_against(m, gpu, s)
    except (StrategyError, ValueError):   # pydantic's ValidationError is a ValueError
        assume(False)
    assume(not (s.offload and s.zero == 0))   # the planner offloads with ZeRO >= 1 (DeepSpeed)
    est = estimate_memory(m, gpu, s)
    phases = table_memory(m, gpu, s)
    # memory.py's phases are allocated bytes (total - overhead); the tables' the same in MiB
    for phase, got in phases.items():
        assert got * MIB >= est.phases.get(phase, 0), (phase, got, est.phases)
    peak = max(phases.values())
    assert peak * MIB >= est.allocated
    assert peak <= math.ceil(est.allocated / MIB) + SLACK_MIB, (phases, est)


def test_one_known_configuration():
    """Qwen3-8B full fine-tune, bf16-mixed AdamW on one H100: 16 B/param states + temporaries."""
    m, gpu = CAT.model("qwen3-8b"), CAT.gpu("h100")
    s = Strategy(workload="full", checkpointing="full", seq_len=2048)
    est = estimate_memory(m, gpu, s)
    got = table_memory(m, gpu, s)
    assert max(got.values()) - est.allocated / MIB < SLACK_MIB
    assert set(got) == {"forward", "backward", "optimizer"}



@settings(max_examples=150, deadline=None)
@given(configurations())
def test_time_tables_bound_estimate_throughput(case):
    """GPU-seconds per token by the time tables: never below speed.estimate_throughput's, and within
    1% of it plus the rounding of its units (10 us per micro-batch term, 0.1 us per layer and per
    serving step, 1 ns per token)."""
    m, gpu, fields = case
    try:
        s = Strategy(**fields)
        check_against(m, gpu, s)
    except (StrategyError, ValueError):
        assume(False)
    assume(not (s.offload and s.zero == 0))
    estimated = s.num_gpus / estimate_throughput(m, gpu, s).tokens_per_s
    got = table_time(m, gpu, s)
    assert got["ok"]
    assert got["gamma_seconds"] >= estimated * (1 - 1e-9)
    # rounding: each per-micro-batch term goes up by at most one TIME_UNIT (10 us; a serving step by
    # 0.1 us), repeated grad_accum + pp times, plus the per-step terms; then per GPU and token
    if s.workload == "serve":
        slack = 4 * TIME_UNIT / FINE / s.concurrency
    else:
        slack = (4 * (s.grad_accum + s.pp) + 6) * TIME_UNIT / (s.micro_batch * s.grad_accum * s.seq_len)
    assert got["gamma_seconds"] <= estimated * 1.01 + s.tp * s.pp * slack + 2e-8, (got, estimated)

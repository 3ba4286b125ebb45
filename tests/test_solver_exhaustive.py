"""CP-SAT against the exhaustive evaluator on random small instances: the same optimum (primary
objective, then GPU count), the same verdict on feasibility, and every chosen plan fits by estimate."""

from __future__ import annotations

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from catalog import default_catalog
from planner.domains import GpuAllowance, Instance, Limits
from planner.exhaustive import solve_exhaustive
from planner.memory import estimate_memory
from planner.solver import PlanSolver

CAT = default_catalog()
MODELS = ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-14b", "qwen3-32b", "qwen3-30b-a3b",
          "qwen3-235b"]
GPUS = ["a100-80g", "a100-40g", "h100", "h200", "l40s", "l4", "rtx4090", "rtx3090", "t4", "v100", "mi300x"]
PINS = {
    "tp": [1, 2, 4, 8], "pp": [1, 2, 4], "zero": [0, 1, 2, 3], "checkpointing": ["none", "selective", "full"],
    "micro_batch": [1, 2, 4], "precision": ["bf16-mixed", "bf16", "fp32", "amp"], "loss": ["fused"],
    "optimizer": ["adamw-8bit", "sgd"], "offload": [True, False], "num_gpus": [1, 2, 4, 8, 16],
    "weights": ["int4", "int8", "fp8"], "kv_cache": ["fp8"], "lora_rank": [8, 64],
}


@st.composite
def instances(draw):
    workload = draw(st.sampled_from(["serve", "qlora", "lora", "full", "pretrain"]))
    names = draw(st.lists(st.sampled_from(GPUS), min_size=1, max_size=2, unique=True))
    gpus = tuple(GpuAllowance(gpu=CAT.gpu(n), max_count=draw(st.sampled_from([1, 2, 4, 8, 16, 32, None])))
                 for n in names)
    pins = {}
    for field in draw(st.lists(st.sampled_from(sorted(PINS)), max_size=2, unique=True)):
        pins[field] = draw(st.sampled_from(PINS[field]))
    limits = Limits(max_hourly_usd=draw(st.sampled_from([None, None, 5.0, 40.0])),
                    max_capex_usd=draw(st.sampled_from([None, None, 100000.0])),
                    min_throughput=draw(st.sampled_from([None, None, None, 500.0, 20000.0])),
                    deadline_hours=draw(st.sampled_from([None, None, None, 2.0, 50.0])),
                    budget_usd=draw(st.sampled_from([None, None, None, 30.0, 2000.0])))
    fields = dict(seq_len=draw(st.sampled_from([512, 4096, 32768])), global_batch=draw(st.sampled_from([8, 64])),
                  total_concurrency=draw(st.sampled_from([1, 16, 128])), context=draw(st.sampled_from([1024, 16384])))
    try:
        return Instance(model=CAT.model(draw(st.sampled_from(MODELS))), workload=workload, gpus=gpus,
                        objective=draw(st.sampled_from(["hourly", "capex", "gpus", "job"])), pins=pins, limits=limits,
                        all_choices=draw(st.sampled_from([False, False, True])), **fields)
    except ValueError:       # a pin that contradicts the workload (e.g. --weights int4 for full)
        return Instance(model=CAT.model("qwen3-0.6b"), workload=workload, gpus=gpus, **fields)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_cpsat_matches_exhaustive(inst):
    note(describe(inst))
    best = solve_exhaustive(inst)
    result = PlanSolver(inst).solve(time_limit=30)
    assert result.status in ("OPTIMAL", "INFEASIBLE"), result.status
    assert (result.status == "OPTIMAL") == best.feasible
    if not best.feasible:
        return
    assert result.objective == best.objective
    choice = result.choice
    assert choice.strategy.num_gpus == best.gpus
    # the tie-break (highest throughput among the optimal plans) agrees too
    assert choice.gpu_time_per_token == best.gamma
    gpu = CAT.gpu(choice.gpu)
    assert estimate_memory(inst.model, gpu, choice.strategy).fits


def describe(inst: Instance) -> str:
    gpus = ",".join(a.gpu.name + (f":{a.max_count}" if a.max_count else "") for a in inst.gpus)
    limits = {k: v for k, v in inst.limits.model_dump().items() if v is not None}
    return (f"{inst.model.name} {inst.workload} --gpus {gpus} objective={inst.objective} pins={inst.pins} "
            f"all_choices={inst.all_choices} "
            f"limits={limits} seq_len={inst.seq_len} global_batch={inst.global_batch} "
            f"total_concurrency={inst.total_concurrency} context={inst.context}")

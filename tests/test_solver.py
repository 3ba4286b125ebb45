"""Hand-checkable instances in the CP-SAT primer's style: must be feasible, infeasible, or reach a
known objective; plus status honesty, top-K, limits and the infeasibility diagnosis."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from catalog import default_catalog
from planner.domains import GpuAllowance, Instance, Limits, default_instance_fields
from planner.memory import estimate_memory
from planner.solve_diagnosis import diagnose
from planner.solve_plan import plan
from planner.solver import PlanSolver
from planner.speed import estimate_throughput

CAT = default_catalog()


def instance(model: str, workload: str, gpus: str, **fields) -> Instance:
    allowances = []
    for item in gpus.split(","):
        name, _, count = item.partition(":")
        allowances.append(GpuAllowance(gpu=CAT.gpu(name), max_count=int(count) if count else None))
    params = {**default_instance_fields(workload), **fields}
    return Instance(model=CAT.model(model), workload=workload, gpus=tuple(allowances),
                    catalog_gpus=tuple(CAT.gpus.values()), **params)


@contextmanager
def expect_feasible(inst: Instance):
    result = PlanSolver(inst).solve(time_limit=30)
    assert result.status == "OPTIMAL", result.status
    s = result.choice.strategy
    assert estimate_memory(inst.model, CAT.gpu(result.choice.gpu), s).fits
    yield result


@contextmanager
def expect_infeasible(inst: Instance):
    result = PlanSolver(inst).solve(time_limit=30)
    assert result.status == "INFEASIBLE", result.status
    yield result


@contextmanager
def expect_objective(inst: Instance, value: float):
    with expect_feasible(inst) as result:
        assert result.objective == pytest.approx(value)
        yield result


# --- feasible, with a known objective ---------------------------------------------------------------

def test_small_model_serves_on_one_gpu():
    """Qwen3-0.6B in bf16 is 1.2 GB: one H100 at its hourly price."""
    with expect_objective(instance("qwen3-0.6b", "serve", "h100"), CAT.gpu("h100").price_hourly.usd) as r:
        assert r.choice.strategy.num_gpus == 1


def test_8b_full_finetune_fits_one_a100_with_offload():
    """8.2B params: bf16 weights (16 GB) + bf16 grads before the copy out (16 GB) fit 80 GB when the
    fp32 master and Adam states go to the CPU (searched only when asked: host RAM is not in the
    catalog). Without offload, 16 B/param + 4 B of AdamW step temporaries = 164 GB, over two GPUs
    with ZeRO-3 82 GB each before activations and 8% allocator slack: three A100s."""
    with expect_objective(instance("qwen3-8b", "full", "a100-80g", pins={"offload": True}), 2.45) as r:
        assert r.choice.strategy.num_gpus == 1 and r.choice.strategy.offload
    with expect_objective(instance("qwen3-8b", "full", "a100-80g"), 3 * 2.45) as r:
        assert not r.choice.strategy.offload


def test_objective_changes_the_answer():
    """Qwen3-8B serving 32 x 4096 tokens needs 16 GB weights + 19 GB KV: one H100, or two RTX 4090s;
    the two 4090s cost less per hour, the single H100 is fewer GPUs."""
    hourly = instance("qwen3-8b", "serve", "rtx4090,h100")
    with expect_feasible(hourly) as r:
        assert r.choice.gpu == "rtx4090" and r.choice.strategy.num_gpus == 2
    with expect_objective(instance("qwen3-8b", "serve", "rtx4090,h100", objective="gpus"), 1) as r:
        assert r.choice.gpu == "h100-sxm"


def test_inventory_moves_the_plan_to_another_type():
    """235B in bf16 (470 GB) needs 8 x 80 GB: only one A100 is available, so eight H100s."""
    with expect_objective(instance("qwen3-235b", "serve", "a100-80g:1,h100:8"), 8 * 4.76) as r:
        assert r.choice.gpu == "h100-sxm" and r.choice.strategy.num_gpus == 8


def test_capex_objective_counts_purchase_price():
    """Qwen3-0.6B serving 32 x 4096 tokens: the KV cache is 2 x 28 layers x 8 heads x 128 x 2 B =
    112 KiB per token, 15 GB in all, over one T4's 14.2 GB usable (90% of 15.8 GB): two T4s."""
    with expect_objective(instance("qwen3-0.6b", "serve", "t4", objective="capex"),
                          2 * CAT.gpu("t4").price_purchase.usd):
        pass


# --- infeasible ------------------------------------------------------------------------------------

def test_235b_does_not_fit_one_gpu():
    with expect_infeasible(instance("qwen3-235b", "full", "a100-80g:1")):
        pass


def test_tp_must_divide_the_heads():
    """Qwen2.5-7B has 28 attention heads (4 KV heads): tp 8 is impossible, tp 4 is fine. (Every
    Qwen3 head count is a multiple of 8.)"""
    with expect_infeasible(instance("qwen2.5-7b", "serve", "h100", pins={"tp": 8})):
        pass
    with expect_feasible(instance("qwen2.5-7b", "serve", "h100", pins={"tp": 4})) as r:
        assert r.choice.strategy.tp == 4


def test_tp_stays_inside_a_node():
    """An RTX 4090 box holds 4 GPUs: tp 8 would cross nodes."""
    with expect_infeasible(instance("qwen3-8b", "serve", "rtx4090", pins={"tp": 8})):
        pass


def test_expert_parallel_needs_experts():
    with expect_infeasible(instance("qwen3-8b", "full", "h100", pins={"ep": 2})):
        pass


def test_price_cap_below_the_cheapest_plan():
    with expect_infeasible(instance("qwen3-8b", "serve", "h100", limits=Limits(max_hourly_usd=4.0))):
        pass


# --- limits that need the speed model --------------------------------------------------------------------

def test_min_throughput_is_met_by_estimate():
    inst = instance("qwen3-8b", "full", "h100", limits=Limits(min_throughput=20000))
    with expect_feasible(inst) as r:
        s = r.choice.strategy
        assert estimate_throughput(inst.model, CAT.gpu(r.choice.gpu), s).tokens_per_s >= 20000


def test_deadline_and_job_objective():
    inst = instance("qwen3-1.7b", "full", "a100-80g", objective="job", tokens=1e9, limits=Limits(deadline_hours=5))
    with expect_feasible(inst) as r:
        s = r.choice.strategy
        tps = estimate_throughput(inst.model, CAT.gpu(r.choice.gpu), s).tokens_per_s
        assert 1e9 / tps / 3600 <= 5
        # the job objective is the job's price: GPUs x $/GPU-hour x hours, rounded up to a cent
        assert r.objective == pytest.approx(s.num_gpus * 2.45 * 1e9 / tps / 3600, rel=0.03)


# --- status, top-K, diagnosis ------------------------------------------------------------------------

def test_time_limit_status_is_honest():
    result = PlanSolver(instance("qwen3-235b", "pretrain", "a100-80g")).solve(time_limit=0.001)
    assert result.status in ("OPTIMAL", "FEASIBLE", "UNKNOWN")
    if result.status == "FEASIBLE":
        assert result.bound <= result.objective and result.gap >= 0


def test_top_k_are_distinct_and_ordered():
    plans = plan(instance("qwen3-4b", "lora", "l40s:4"), top=3, time_limit=30)
    assert len(plans) == 3
    keys = [(p.solver.value, p.strategy.model_dump_json()) for p in plans]
    assert len({k[1] for k in keys}) == 3
    assert [k[0] for k in keys] == sorted(k[0] for k in keys)


def test_diagnosis_of_long_sequence_on_one_4090():
    """The card's example: Qwen3-0.6B full fine-tune at 32k tokens on one RTX 4090. The fp32 logits of
    an unfused loss alone are 50 GB; a fused loss (with checkpointing), four 4090s or a larger GPU fit."""
    inst = instance("qwen3-0.6b", "full", "rtx4090:1", seq_len=32768)
    with expect_infeasible(inst):
        pass
    d = diagnose(inst)
    assert "--loss unfused (default)" in d.binding
    assert d.over_capacity_mib and d.over_capacity_mib > 0
    fixes = {f.released[0]: f for f in d.fixes}
    assert fixes["--loss unfused (default)"].changes == {"loss": "fused"}
    assert fixes["--loss unfused (default)"].gpu == "rtx4090" and fixes["--loss unfused (default)"].num_gpus == 1
    assert fixes["at most 1 x rtx4090"].num_gpus > 1
    assert fixes["--gpus rtx4090"].num_gpus == 1 and fixes["--gpus rtx4090"].gpu != "rtx4090"
    assert d.fixes[0].released == ["--loss unfused (default)"]     # the smallest change first


def test_diagnosis_names_a_binding_limit():
    """$4/h buys less than one H100: the cap binds together with the GPU list (cheaper GPUs exist)."""
    d = diagnose(instance("qwen3-8b", "serve", "h100", limits=Limits(max_hourly_usd=4.0)))
    assert set(d.binding) == {"--max-hourly 4", "--gpus h100-sxm"}
    fixes = {f.released[0]: f for f in d.fixes}
    assert fixes["--max-hourly 4"].gpu == "h100-sxm"
    assert fixes["--gpus h100-sxm"].objective <= 4.0
    assert "--max-hourly 4" in d.summary

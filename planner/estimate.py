"""Evaluate one fully specified configuration: memory (and, where available, speed and cost)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from catalog.schema import GpuSpec, ModelArch
from planner.cost import Cost, estimate_cost
from planner.memory import MemoryBreakdown, estimate_memory
from planner.params import count_params
from planner.speed import Throughput, estimate_throughput
from planner.strategy import Strategy, check_against


class ModelInfo(BaseModel):
    name: str = Field(..., description="catalog name, or the folder of a config.json")
    params_total: int = Field(..., description="exact parameter count (embedding and untied head included)")
    params_active: int = Field(..., description="parameters one token uses (MoE: top-k experts)")


class Estimate(BaseModel):
    """`gpuplan estimate --json`: bytes per GPU throughout."""

    model: ModelInfo
    gpu: str = Field(..., description="catalog GPU name")
    workload: str = Field(..., description="pretrain, full, lora, qlora or serve")
    strategy: Strategy
    memory: MemoryBreakdown
    throughput: Throughput
    cost: Cost


def model_info(m: ModelArch) -> ModelInfo:
    pc = count_params(m)
    return ModelInfo(name=m.name, params_total=pc.total, params_active=pc.active)


def resolved(s: Strategy) -> Strategy:
    """The strategy with its default weight format made explicit."""
    return s.model_copy(update={"weights": s.weight_format})


def estimate(m: ModelArch, gpu: GpuSpec, s: Strategy, tokens: float | None = None) -> Estimate:
    """Memory, speed and cost of `s`; `tokens` sizes a training job (trained tokens) for its cost."""
    check_against(m, gpu, s)
    speed = estimate_throughput(m, gpu, s)
    return Estimate(model=model_info(m), gpu=gpu.name, workload=s.workload, strategy=resolved(s),
                    memory=estimate_memory(m, gpu, s), throughput=speed,
                    cost=estimate_cost(gpu, s, speed, tokens))

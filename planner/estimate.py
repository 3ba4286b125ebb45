"""Evaluate one fully specified configuration: memory (and, where available, speed and cost)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from catalog.schema import GpuSpec, ModelArch
from planner.memory import MemoryBreakdown, estimate_memory
from planner.params import count_params
from planner.strategy import Strategy, check_against


class ModelInfo(BaseModel):
    name: str
    params_total: int
    params_active: int = Field(..., description="parameters one token uses (MoE: top-k experts)")


class Estimate(BaseModel):
    """`gpuplan estimate --json`: bytes per GPU throughout."""

    model: ModelInfo
    gpu: str
    workload: str
    strategy: dict
    memory: MemoryBreakdown


def model_info(m: ModelArch) -> ModelInfo:
    pc = count_params(m)
    return ModelInfo(name=m.name, params_total=pc.total, params_active=pc.active)


def strategy_dict(s: Strategy) -> dict:
    out = s.model_dump()
    out["lora_targets"] = list(s.lora_targets)
    out["dp"] = s.dp
    out["weights"] = s.weight_format
    return out


def estimate(m: ModelArch, gpu: GpuSpec, s: Strategy) -> Estimate:
    check_against(m, gpu, s)
    return Estimate(model=model_info(m), gpu=gpu.name, workload=s.workload, strategy=strategy_dict(s),
                    memory=estimate_memory(m, gpu, s))

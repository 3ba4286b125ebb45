"""A plan: the solver's choice evaluated by `estimate` (memory, speed, cost), with the solver's verdict.

The figures a user reads come from planner/estimate.py, planner/speed.py and planner/cost.py on the
chosen Strategy, never from the solver's integer variables; the solver's tables round memory up, so
a chosen configuration always fits by `estimate` too (checked here: a mismatch is a bug, raised).
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field

from planner.cost import Cost
from planner.domains import Instance
from planner.estimate import ModelInfo, estimate, model_info
from planner.memory import MemoryBreakdown
from planner.solve_diagnosis import Diagnosis, diagnose
from planner.solver import OBJECTIVE_UNITS, PlanSolver
from planner.speed import Throughput
from planner.strategy import Strategy


class SolverInfo(BaseModel):
    status: str = Field(..., description="OPTIMAL (proved) | FEASIBLE (time limit: see bound, gap) | "
                                         "INFEASIBLE (see diagnosis) | UNKNOWN (time limit, nothing found)")
    objective: str = Field(..., description="hourly | job | capex | gpus")
    unit: str
    value: Optional[float] = Field(None, description="the plan's objective")
    bound: Optional[float] = Field(None, description="proved lower bound of the objective")
    gap: Optional[float] = None
    seconds: float = Field(..., description="CP-SAT wall time (all solves of this plan)")
    diagnosis: Optional[Diagnosis] = None


class Plan(BaseModel):
    """One plan: `estimate --json`'s fields (model, gpu, workload, strategy, memory; bytes per GPU),
    speed and cost, the question's parameters, and the solver's verdict."""

    model: ModelInfo
    gpu: Optional[str] = None
    workload: str
    rank: int = Field(1, description="1 = cheapest; 2.. = the next distinct configurations (--top)")
    strategy: Optional[Strategy] = None
    memory: Optional[MemoryBreakdown] = None
    throughput: Optional[Throughput] = None
    cost: Optional[Cost] = None
    parameters: dict = Field(..., description="sequence length, batch, tokens, concurrency, context, limits")
    solver: SolverInfo


def parameters(inst: Instance) -> dict:
    out = {"objective": inst.objective, "tokens": inst.tokens}
    if inst.is_training:
        out.update(seq_len=inst.seq_len, global_batch=inst.global_batch)
    else:
        out.update(total_concurrency=inst.total_concurrency, context=inst.context)
    out.update({k: v for k, v in inst.limits.model_dump().items() if v is not None})
    out["gpus"] = {a.gpu.name: a.max_count for a in inst.gpus}
    out["pins"] = {k: list(v) if isinstance(v, tuple) else v for k, v in inst.pins.items()}
    return out


def plan(inst: Instance, top: int = 1, time_limit: float = 10.0, workers: int = 4,
         diagnose_infeasible: bool = True) -> list[Plan]:
    """The `top` best distinct configurations (fewer if fewer exist); one diagnosed plan if none."""
    solver = PlanSolver(inst)
    plans: list[Plan] = []
    seconds = 0.0
    for rank in range(1, top + 1):
        result = solver.solve(time_limit, workers)
        seconds += result.seconds
        info = SolverInfo(status=result.status, objective=inst.objective, unit=OBJECTIVE_UNITS[inst.objective],
                          value=result.objective, bound=result.bound, gap=result.gap, seconds=seconds)
        if result.choice is None:
            if rank == 1:
                if result.status == "INFEASIBLE" and diagnose_infeasible:
                    info.diagnosis = diagnose(inst, time_limit)
                plans.append(Plan(model=model_info(inst.model), workload=inst.workload,
                                  parameters=parameters(inst), solver=info))
            break
        plans.append(_evaluated(inst, result.choice.gpu, result.choice.strategy, rank, info))
        solver.exclude(solver.solver)
    return plans


def _evaluated(inst: Instance, gpu_name: str, s: Strategy, rank: int, info: SolverInfo) -> Plan:
    gpu = next(a.gpu for a in inst.gpus if a.gpu.name == gpu_name)
    est = estimate(inst.model, gpu, s, tokens=inst.tokens)
    if not est.memory.fits:
        raise RuntimeError(f"solver chose a configuration that estimate says does not fit: {gpu_name} {s}")
    return Plan(model=est.model, gpu=gpu.name, workload=inst.workload, rank=rank, strategy=est.strategy,
                memory=est.memory, throughput=est.throughput, cost=est.cost, parameters=parameters(inst),
                solver=info)

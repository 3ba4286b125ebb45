"""Why an instance has no plan, and the smallest change that gives one, computed by the solver.

1. Which restrictions bind: the relaxed model (full domains, every catalog GPU) with one literal per
   restriction (pin, default, GPU list, inventory, limit), solved under all of them as assumptions;
   CP-SAT's sufficient assumptions for infeasibility, shrunk by deletion to a minimal core.
2. How far off memory is: the normal model with a capacity slack, minimised (the best configuration
   needs capacity + slack MiB per GPU).
3. The fixes: for every restriction of the core, the best plan when only that one is released (a
   larger GPU type, the GPU count needed, the pin's value that works, ...); and the smallest set of
   releases overall (restriction literals as choices, fewest released, then the objective).
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field

from planner.domains import GpuAllowance, Instance, Limits, Restriction
from planner.solver import OBJECTIVE_UNITS, PlanSolver

# Releasing a default is the smallest change, then a pin, the inventory, the GPU list, a limit.
RELEASE_WEIGHT = {"default": 1, "pin": 2, "inventory": 3, "gpus": 4, "limit": 5}


class Fix(BaseModel):
    released: list[str] = Field(..., description="restrictions dropped, as the flags that set them")
    gpu: str
    num_gpus: int
    changes: dict[str, object] = Field(..., description="the released choices' new values")
    objective: float
    text: str


class Diagnosis(BaseModel):
    binding: list[str] = Field(..., description="a minimal set of restrictions that together admit no plan")
    over_capacity_mib: Optional[int] = Field(
        None, description="how many MiB per GPU the best configuration under every restriction lacks")
    fixes: list[Fix] = Field(..., description="each a change that works; the first is the smallest")
    summary: str


def diagnose(inst: Instance, time_limit: float = 10.0) -> Diagnosis:
    over = _over_capacity(inst, time_limit)
    relaxed = PlanSolver(inst, relaxed=True)
    lits = relaxed.restriction_lits
    by_index = {lit.index: r for r, lit in lits.items()}
    result = relaxed.solve(time_limit, assumptions=list(lits.values()))
    if result.status != "INFEASIBLE":
        # the restrictions alone do not explain it (a derived rule or a time limit): say so
        return Diagnosis(binding=[], over_capacity_mib=over, fixes=[],
                         summary=f"no plan found ({result.status}); no restriction of the question explains it")
    core = [by_index[i] for i in relaxed.solver.sufficient_assumptions_for_infeasibility() if i in by_index]
    core = _minimal_core(relaxed, core, lits, time_limit)
    fixes = []
    for r in core:
        fix = _release(relaxed, [r], lits, time_limit)
        if fix is not None:
            fixes.append(fix)
    if not fixes:
        relaxed.minimize_releases({r: RELEASE_WEIGHT[r.kind] for r in lits})
        best = relaxed.solve(time_limit)
        if best.choice is not None:
            released = [r for r, lit in lits.items() if not relaxed.solver.boolean_value(lit)]
            fixes.append(_fix(inst, released, best.choice))
    fixes.sort(key=lambda f: (len(f.released), f.objective))
    return Diagnosis(binding=[r.text for r in core], over_capacity_mib=over, fixes=fixes,
                     summary=_summary(inst, core, over, fixes))


def _over_capacity(inst: Instance, time_limit: float) -> Optional[int]:
    """MiB per GPU that the best configuration lacks under every restriction (None: memory is not
    what binds, or no configuration exists at all)."""
    solver = PlanSolver(inst, slack=True)
    if solver.tables is None or solver.solve(time_limit).choice is None:
        return None
    return int(solver.solver.value(solver.slack)) or None


def _minimal_core(solver: PlanSolver, core: list[Restriction], lits: dict, time_limit: float) -> list[Restriction]:
    """Drop each member whose removal keeps the assumptions infeasible (deletion filter)."""
    kept = list(core)
    for r in list(core):
        trial = [x for x in kept if x is not r]
        if trial and solver.solve(time_limit, assumptions=[lits[x] for x in trial]).status == "INFEASIBLE":
            kept = trial
    return kept


def _release(solver: PlanSolver, released: list[Restriction], lits: dict, time_limit: float) -> Optional[Fix]:
    keep = [lit for r, lit in lits.items() if r not in released]
    result = solver.solve(time_limit, assumptions=keep)
    if result.choice is None:
        return None
    return _fix(solver.inst, released, _replanned(solver.inst, released, result.choice, time_limit))


def _replanned(inst: Instance, released: list[Restriction], choice, time_limit: float):
    """The question with the released restrictions set to what worked, planned normally (so the fix
    also gets the throughput tie-break); the relaxed solve's choice if that fails."""
    s = choice.strategy
    pins, gpus, limits = dict(inst.pins), list(inst.gpus), inst.limits.model_dump()
    for r in released:
        if r.kind in ("pin", "default"):
            pins[r.field] = s.num_gpus if r.field == "num_gpus" else getattr(
                s, "weight_format" if r.field == "weights" else r.field)
        elif r.kind == "gpus":
            gpus = [GpuAllowance(gpu=next(g for g in inst.catalog_gpus if g.name == choice.gpu),
                                 max_count=max((a.max_count or 0) for a in inst.gpus) or None)]
        elif r.kind == "inventory":
            gpus = [a.model_copy(update={"max_count": None}) if f"count:{a.gpu.name}" == r.field else a for a in gpus]
        else:
            limits[r.field] = None
    variant = inst.model_copy(update={"pins": pins, "gpus": tuple(gpus), "limits": Limits(**limits)})
    result = PlanSolver(variant).solve(time_limit)
    return result.choice if result.choice is not None else choice


def _fix(inst: Instance, released: list[Restriction], choice) -> Fix:
    s = choice.strategy
    changes = {}
    for r in released:
        if r.kind in ("pin", "default"):
            changes[r.field] = getattr(s, "weight_format" if r.field == "weights" else r.field)
        elif r.kind == "gpus":
            changes["gpu"] = choice.gpu
        elif r.kind == "inventory":
            changes[r.field] = s.num_gpus
    unit = OBJECTIVE_UNITS[inst.objective]
    what = ", ".join(f"{k.replace('count:', 'count of ')}={v}" for k, v in changes.items())
    text = (f"release {' and '.join(r.text for r in released)}: {what} fits on {s.num_gpus} x {choice.gpu} "
            f"({_key(s)}), {choice.objective:g} {unit}")
    return Fix(released=[r.text for r in released], gpu=choice.gpu, num_gpus=s.num_gpus, changes=changes,
               objective=choice.objective, text=text)


def _key(s) -> str:
    parts = [f"tp={s.tp} pp={s.pp} dp={s.dp}" + (f" ep={s.ep}" if s.ep > 1 else "")]
    if s.is_training:
        parts += [s.precision, f"zero={s.zero}", f"checkpointing={s.checkpointing}", f"micro_batch={s.micro_batch}"]
        if s.offload:
            parts.append("offload")
    else:
        parts += [f"weights={s.weight_format}", f"kv={s.kv_cache}", f"concurrency={s.concurrency}"]
    return ", ".join(parts)


def _summary(inst: Instance, core: list[Restriction], over: Optional[int], fixes: list[Fix]) -> str:
    gpus = ", ".join(a.gpu.name + (f":{a.max_count}" if a.max_count else "") for a in inst.gpus)
    why = "per-GPU memory"
    if any(r.kind == "limit" for r in core):
        why = " and ".join(r.text for r in core if r.kind == "limit")
    elif over is not None:
        why = f"per-GPU memory ({over / 1024:.1f} GiB short)"
    head = f"{inst.model.name} {inst.workload} does not fit on {gpus}: {why} binds with " + \
        (", ".join(r.text for r in core) or "the question as asked")
    if not fixes:
        return head + "; nothing in the catalog fits"
    return head + f"; smallest fix: {fixes[0].text}"

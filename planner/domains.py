"""What the planner searches over: the instance (model, workload, GPUs, limits, pins) and the
domain of every choice, grouped in blocks whose options the CP-SAT model turns into literals.

Blocks (one literal per option, exactly one option per block):
  gpu      the GPU type (its count is the layout's world size)
  layout   (tp, pp, dp, ep): world = tp*pp*dp GPUs, TP inside a node, EP divides dp and the experts;
           the CP-SAT model splits it into three blocks, (tp, pp) pairs, dp and ep (planner/solver.py)
  zero     ZeRO/FSDP stage 0-3 (training)
  regime   (precision, optimizer, offload, weight format) (serving: weight format only)
  checkpointing, loss, micro_batch, lora_rank (training), kv_cache (serving)
Derived, not free: grad_accum = ceil(global_batch / (micro_batch * dp)) unless pinned, and the
serving concurrency per replica = ceil(total_concurrency / dp) unless pinned.

Every narrowing of a domain is a Restriction with its reason (a user pin, a default policy, the
GPU list, an inventory count, a limit), so that an infeasible plan can say which one binds and
what releasing it would give (planner/solve_diagnosis.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from catalog.schema import GpuSpec, ModelArch
from planner.strategy import (ALL_LINEAR, PEFT_WORKLOADS, QUANTIZED_FORMATS, Strategy, StrategyError,
                              Workload)

Objective = Literal["hourly", "job", "capex", "gpus"]
OBJECTIVES: tuple[str, ...] = ("hourly", "job", "capex", "gpus")

# An unlisted GPU count means "as many as needed", up to this many (64 nodes of 8).
MAX_GPUS = 512
TP_VALUES = (1, 2, 4, 8)
PP_VALUES = (1, 2, 4, 8, 16)
MICRO_BATCHES = (1, 2, 4, 8, 16)
LORA_RANKS = (8, 16, 32, 64)

# Defaults of the quantities that are not choices (stated by `plan` in its output).
PLAN_DEFAULTS: dict[str, dict[str, float]] = {
    # seq_len: packed training sequence; global_batch: sequences per optimizer step;
    # tokens: what `--objective job` pays for (trained or generated tokens)
    "pretrain": {"seq_len": 4096, "global_batch": 256, "tokens": 1e12},
    "full": {"seq_len": 4096, "global_batch": 64, "tokens": 1e9},
    "lora": {"seq_len": 4096, "global_batch": 64, "tokens": 1e9},
    "qlora": {"seq_len": 4096, "global_batch": 64, "tokens": 1e9},
    # total_concurrency: sequences the whole deployment holds at once; context: tokens each
    "serve": {"total_concurrency": 32, "context": 4096, "tokens": 1e9},
}

# Default policy: choices that change the trained model or the served answers (numerics, rank),
# need a non-default library, or depend on what the catalog does not know (CPU offload needs host
# RAM per node, which no catalog entry states) are narrowed to the conventional value. The planner
# reports them as restrictions; a pin widens them, and a diagnosis may suggest releasing one.
DEFAULT_POLICY: dict[str, dict[str, tuple]] = {
    "precision": {"pretrain": ("bf16-mixed", "amp", "fp32"), "full": ("bf16-mixed", "amp", "fp32"),
                  "lora": ("bf16-mixed", "amp", "fp32"), "qlora": ("bf16-mixed", "fp32")},
    "optimizer": {w: ("adamw",) for w in ("pretrain", "full", "lora", "qlora")},
    "loss": {w: ("unfused",) for w in ("pretrain", "full", "lora", "qlora")},   # transformers default
    "lora_rank": {"lora": (16,), "qlora": (16,)},
    "weights": {"qlora": ("nf4",), "serve": ("bf16",)},
    "kv_cache": {"serve": ("bf16",)},
    "offload": {w: (False,) for w in ("pretrain", "full", "lora", "qlora")},
}


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    ep: int

    @property
    def n(self) -> int:
        return self.tp * self.pp * self.dp


@dataclass(frozen=True)
class Regime:
    """Everything that sets bytes per parameter."""

    precision: str
    optimizer: str
    offload: bool
    weights: str


class GpuAllowance(BaseModel):
    """A GPU type the plan may use, and how many exist (None: up to MAX_GPUS)."""

    model_config = ConfigDict(frozen=True)
    gpu: GpuSpec
    max_count: Optional[PositiveInt] = None

    @property
    def cap(self) -> int:
        return min(self.max_count or MAX_GPUS, MAX_GPUS)


class Limits(BaseModel):
    """Caps on the plan; each is a restriction a diagnosis may show binding (flags: LIMIT_FLAGS)."""

    model_config = ConfigDict(frozen=True)
    min_throughput: Optional[PositiveFloat] = Field(None, description="tokens/s of the whole cluster")
    deadline_hours: Optional[PositiveFloat] = Field(None, description="time to process `tokens`")
    budget_usd: Optional[PositiveFloat] = Field(None, description="cap on the job cost for `tokens`")
    max_hourly_usd: Optional[PositiveFloat] = None
    max_capex_usd: Optional[PositiveFloat] = None


class Instance(BaseModel):
    """One planning question. Pins are Strategy fields fixed by the user (the estimate flags)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    model: ModelArch
    workload: Workload
    gpus: tuple[GpuAllowance, ...] = Field(..., min_length=1)
    catalog_gpus: tuple[GpuSpec, ...] = Field((), description="every known GPU: what a diagnosis may suggest")
    objective: Objective = "hourly"
    seq_len: PositiveInt = 4096
    global_batch: PositiveInt = Field(64, description="sequences per optimizer step (training)")
    tokens: PositiveFloat = Field(1e9, description="tokens the job trains on or generates")
    total_concurrency: PositiveInt = Field(32, description="serving: sequences held at once, all replicas")
    context: PositiveInt = Field(4096, description="serving: tokens per sequence")
    pins: dict[str, Any] = Field(default_factory=dict)
    limits: Limits = Limits()
    all_choices: bool = Field(False, description="search every value, not only DEFAULT_POLICY's")

    @model_validator(mode="after")
    def _check(self) -> "Instance":
        unknown = set(self.pins) - set(Strategy.model_fields) - {"dp"}
        if unknown:
            raise StrategyError(f"unknown pinned field(s): {', '.join(sorted(unknown))}")
        for field in ("seq_len", "context", "workload"):
            if field in self.pins:
                raise StrategyError(f"'{field}' is a plan parameter, not a pin")
        names = [a.gpu.name for a in self.gpus]
        if len(set(names)) != len(names):
            raise StrategyError(f"GPU listed twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
        if self.is_training:
            # the pins must be a valid partial strategy (e.g. --weights nf4 with --workload full)
            Strategy(workload=self.workload, **{k: v for k, v in self.pins.items()
                                               if k in ("weights", "precision", "zero", "offload",
                                                        "lora_targets", "optimizer")})
        return self

    @property
    def is_training(self) -> bool:
        return self.workload != "serve"

    @property
    def is_peft(self) -> bool:
        return self.workload in PEFT_WORKLOADS


def default_instance_fields(workload: str) -> dict:
    return dict(PLAN_DEFAULTS[workload])


# --- restrictions -----------------------------------------------------------------------------

RestrictionKind = Literal["pin", "default", "gpus", "inventory", "limit"]


@dataclass(frozen=True)
class Restriction:
    """One narrowing of the search, with the flag that would change it.

    field: a Strategy field ("tp", "loss", ...), "gpu" (the allowed types), "count:<gpu>" (an
    inventory), or a Limits field. allowed: the values kept (None for limits)."""

    kind: RestrictionKind
    field: str
    allowed: Optional[tuple] = None
    text: str = ""


LIMIT_FLAGS = {"min_throughput": "--min-throughput", "deadline_hours": "--deadline", "budget_usd": "--budget",
               "max_hourly_usd": "--max-hourly", "max_capex_usd": "--max-capex"}

# Pins the solver can release in a diagnosis: fields of a choice block. grad_accum, concurrency,
# attention and lora_targets pins are parameters of the question (they reshape derived quantities).
RELAXABLE_PINS = ("num_gpus", "tp", "pp", "dp", "ep", "zero", "precision", "weights", "optimizer", "offload",
                  "checkpointing", "loss", "micro_batch", "lora_rank", "kv_cache")


def _flag(field: str, values) -> str:
    return f"--{field.replace('_', '-')} {'|'.join(str(v).lower() for v in values)}"


def restrictions(inst: Instance) -> list[Restriction]:
    """Every narrowing of the full domains that this instance implies, in a stable order."""
    out: list[Restriction] = []
    for field in RELAXABLE_PINS:
        if field in inst.pins:
            out.append(Restriction("pin", field, (inst.pins[field],), _flag(field, (inst.pins[field],))))
    for field, by_workload in DEFAULT_POLICY.items():
        allowed = by_workload.get(inst.workload)
        if allowed is not None and field not in inst.pins and not inst.all_choices:
            out.append(Restriction("default", field, allowed, _flag(field, allowed) + " (default)"))
    if inst.catalog_gpus and {g.name for g in inst.catalog_gpus} - {a.gpu.name for a in inst.gpus}:
        listed = tuple(a.gpu.name for a in inst.gpus)
        out.append(Restriction("gpus", "gpu", listed, f"--gpus {','.join(listed)}"))
    for a in inst.gpus:
        if a.max_count is not None:
            out.append(Restriction("inventory", f"count:{a.gpu.name}", (a.max_count,),
                                   f"at most {a.max_count} x {a.gpu.name}"))
    for field, value in inst.limits.model_dump().items():
        if value is not None:
            out.append(Restriction("limit", field, None, f"{LIMIT_FLAGS[field]} {value:g}"))
    return out


# --- domains ------------------------------------------------------------------------------------

class Domains:
    """The options of every block. `relaxed=False`: pins and defaults already applied (the normal
    solve); `relaxed=True`: the full domains, every restriction left to the solver as a literal,
    every catalog GPU allowed (planner/solve_diagnosis.py)."""

    def __init__(self, inst: Instance, relaxed: bool = False):
        self.inst = inst
        self.relaxed = relaxed
        self.restrictions = restrictions(inst)
        self._keep = {} if relaxed else {r.field: set(r.allowed) for r in self.restrictions
                                         if r.kind in ("pin", "default")}
        if relaxed:
            # inventories become restrictions; another GPU type is offered in the count the user has
            # (when every listed type has one): "a larger GPU", not "more of another GPU"
            listed = {a.gpu.name for a in inst.gpus}
            counts = [a.max_count for a in inst.gpus]
            same = max(counts) if all(counts) else None
            self.gpus = [GpuAllowance(gpu=a.gpu) for a in inst.gpus] + [
                GpuAllowance(gpu=g, max_count=same) for g in inst.catalog_gpus if g.name not in listed]
        else:
            self.gpus = list(inst.gpus)
        training = inst.is_training
        self.zero = self._values("zero", (0, 1, 2, 3) if training else (0,))
        self.checkpointing = self._values("checkpointing", ("none", "selective", "full") if training else ("none",))
        self.loss = self._values("loss", ("unfused", "fused") if training else ("unfused",))
        self.micro_batch = self._values("micro_batch", MICRO_BATCHES if training else (1,))
        self.lora_rank = self._values("lora_rank", LORA_RANKS if inst.is_peft else (16,))
        self.kv_cache = self._values("kv_cache", ("bf16",) if training else ("bf16", "fp8"))
        self.regimes = [r for r in self._all_regimes() if self._kept(r, ("precision", "optimizer", "offload",
                                                                             "weights"))]
        self.layouts = [lay for lay in self._all_layouts() if self._valid_layout(lay)
                        and self._kept(lay, ("tp", "pp", "dp", "ep")) and self._kept_value("num_gpus", lay.n)]
        # the layout block, factored: (tp, pp) pairs, dp values and ep values of the valid layouts
        self.mp_options = sorted({(lay.tp, lay.pp) for lay in self.layouts})
        self.tp_options = sorted({lay.tp for lay in self.layouts})
        self.dp_options = sorted({lay.dp for lay in self.layouts})
        self.ep_options = sorted({lay.ep for lay in self.layouts})
        # Strategy fields that are parameters here, not choices
        self.fixed = {"attention": inst.pins.get("attention", "flash"),
                      "lora_targets": inst.pins.get("lora_targets", ALL_LINEAR)}

    @property
    def empty(self) -> bool:
        return not all((self.gpus, self.layouts, self.regimes, self.zero, self.checkpointing, self.loss,
                        self.micro_batch, self.lora_rank, self.kv_cache))

    # --- helpers -------------------------------------------------------------------------------
    def _values(self, field: str, candidates: tuple) -> tuple:
        pinned = self.inst.pins.get(field)
        if pinned is not None and pinned not in candidates:
            candidates = (*candidates, pinned)   # a pin outside the usual candidates is still searched
        return tuple(v for v in candidates if self._kept_value(field, v))

    def _kept_value(self, field: str, value) -> bool:
        keep = self._keep.get(field)
        return keep is None or value in keep

    def _kept(self, option, fields: tuple[str, ...]) -> bool:
        return all(self._kept_value(f, getattr(option, f)) for f in fields)

    def _all_regimes(self) -> list[Regime]:
        w = self.inst.workload
        if w == "serve":
            return [Regime("bf16-mixed", "adamw", False, f) for f in self._values("weights", (
                "bf16", "fp8", "int8", "int4", "nf4"))]
        precisions = ("bf16-mixed", "fp8-mixed", "amp", "bf16", "fp32")
        if w == "qlora":
            precisions = tuple(p for p in precisions if p != "amp")   # Strategy: amp is not for qlora
        formats = QUANTIZED_FORMATS if w == "qlora" else ("bf16",)
        return [Regime(p, o, off, f) for p in precisions for o in ("adamw", "adamw-8bit", "sgd")
                for off in (False, True) for f in formats]

    def _all_layouts(self) -> list[Layout]:
        m, pins = self.inst.model, self.inst.pins
        tps = sorted(set(TP_VALUES) | ({pins["tp"]} if "tp" in pins else set()))
        pps = sorted(set(PP_VALUES) | ({pins["pp"]} if "pp" in pins else set()))
        eps = [1]
        if m.is_moe:
            eps = [e for e in range(1, m.num_experts + 1) if m.num_experts % e == 0 and e & (e - 1) == 0]
            eps += [pins["ep"]] if pins.get("ep", 1) not in eps else []
        counts = sorted({n for a in self.gpus for n in gpu_counts(a.gpu, a.cap)})
        return [Layout(tp, pp, n // (tp * pp), ep) for n in counts for tp in tps for pp in pps
                if n % (tp * pp) == 0 for ep in eps if (n // (tp * pp)) % ep == 0]

    def _valid_layout(self, lay: Layout) -> bool:
        """Divisibility (planner.strategy.check_against) and the batch: no replica without a sequence."""
        m, inst = self.inst.model, self.inst
        heads, kv = m.num_attention_heads, m.num_key_value_heads
        if heads % lay.tp or (kv % lay.tp and lay.tp % kv) or lay.pp > m.num_hidden_layers:
            return False
        if (m.num_experts or 1) % lay.ep:
            return False
        if inst.is_training:
            return "grad_accum" in inst.pins or lay.dp <= inst.global_batch
        # serving: every replica holds at least one of the concurrent sequences
        if lay.dp > inst.total_concurrency:
            return False
        return "concurrency" not in inst.pins or lay.dp * inst.pins["concurrency"] >= inst.total_concurrency

    # --- per-GPU compatibility ------------------------------------------------------------------
    @staticmethod
    def layout_fits_gpu(lay: Layout, a: GpuAllowance) -> bool:
        """TP inside a node; the world is part of one node or whole nodes, within the cap."""
        node = a.gpu.gpus_per_node
        return lay.tp <= node and lay.n <= a.cap and (lay.n <= node or lay.n % node == 0)

    def regime_fits_gpu(self, r: Regime, g: GpuSpec) -> bool:
        if not self.inst.is_training:
            return True
        if r.precision in ("bf16", "bf16-mixed") and g.bf16_tflops is None:
            return False
        return not (r.precision == "fp8-mixed" and g.fp8_tflops is None)

    # --- derived quantities ----------------------------------------------------------------------
    def grad_accum(self, lay: Layout, micro_batch: int) -> int:
        pinned = self.inst.pins.get("grad_accum")
        return pinned if pinned else math.ceil(self.inst.global_batch / (micro_batch * lay.dp))

    def concurrency(self, lay: Layout) -> int:
        pinned = self.inst.pins.get("concurrency")
        return pinned if pinned else math.ceil(self.inst.total_concurrency / lay.dp)

    def strategy(self, lay: Layout, r: Regime, zero: int = 0, checkpointing: str = "none",
                 loss: str = "unfused", micro_batch: int = 1, lora_rank: int = 16,
                 kv_cache: str = "bf16") -> Strategy:
        """The Strategy of one option of every block (what `estimate` evaluates)."""
        inst = self.inst
        common = dict(workload=inst.workload, num_gpus=lay.n, tp=lay.tp, pp=lay.pp, ep=lay.ep,
                      weights=r.weights, attention=self.fixed["attention"],
                      lora_targets=self.fixed["lora_targets"], lora_rank=lora_rank)
        if not inst.is_training:
            return Strategy(**common, kv_cache=kv_cache, concurrency=self.concurrency(lay), context=inst.context)
        return Strategy(**common, zero=zero, precision=r.precision, optimizer=r.optimizer, offload=r.offload,
                        checkpointing=checkpointing, loss=loss, micro_batch=micro_batch, seq_len=inst.seq_len,
                        grad_accum=self.grad_accum(lay, micro_batch))


def gpu_counts(g: GpuSpec, cap: int) -> list[int]:
    """Cluster sizes: any count inside one node, whole nodes beyond."""
    node = g.gpus_per_node
    return list(range(1, min(node, cap) + 1)) + [k * node for k in range(2, cap // node + 1)]

"""The CP-SAT planner: one model in which every choice is a decision variable.

Encoding (DESIGN.md "The solver"; the CP-SAT primer's solver-class style):
- one Boolean literal per option of each block (planner/domains.py): GPU type, (tp, pp) pair, dp,
  ep, ZeRO stage, regime (precision, optimizer, offload, weight format), checkpointing, loss,
  micro-batch, LoRA rank, KV-cache format; exactly one per block. Derived literals (tp = 4, pp > 1,
  precision = amp, ZeRO >= k, ...) are channelled from them by one linear equality each;
- world = tp * pp * dp by one half-reified equality per (tp, pp) literal; the GPU count per type is
  an integer variable, zero unless that type is chosen, so prices are linear;
- a term coefficient(block A) x quantity(block B) is a half-reified linear constraint enforced by
  A's literal: `term * den >= coef_A * Q_B`; a division by a degree (ZeRO over dp, experts over ep,
  activations over tp) is `q * d >= Q` under the literal of d: ceil, never below;
- memory in MiB, KiB and KiParams (planner/solve_tables.py); every phase of every pipeline stage
  must fit: max over phases <= capacity <=> each phase <= capacity;
- time (planner/solve_time.py): GPU-seconds per token, from which throughput, job time and job
  cost are linear; it enters the model when the objective or a limit needs it;
- objective, lexicographic: (primary, then fewer GPUs) as one weighted sum; once proved, a second
  solve holds both and maximises throughput (minimises GPU-seconds per token).
Every integer variable stays below 2**31 (see _int).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

from ortools.sat.python import cp_model
from pydantic import BaseModel, ConfigDict, Field

from planner.domains import MAX_GPUS, Domains, Instance, Layout, Restriction
from planner.solve_tables import (COEF_SCALE, KEEP_SCALE, KIB, MIB, STATE_DEN, STATE_TERMS, ParamClass,
                                  build_tables, ceil_div)
from planner.solve_time import GAMMA_UNIT
from planner.strategy import Strategy

STATUS_NAMES = {cp_model.OPTIMAL: "OPTIMAL", cp_model.FEASIBLE: "FEASIBLE",
                cp_model.INFEASIBLE: "INFEASIBLE", cp_model.UNKNOWN: "UNKNOWN",
                cp_model.MODEL_INVALID: "MODEL_INVALID"}
TIME_LIMITS = ("min_throughput", "deadline_hours", "budget_usd")
MAX_MIB = 2 ** 22          # bound of every MiB variable (4 TiB per GPU): keeps every constraint far from int64 overflow
OBJECTIVE_UNITS = {"hourly": "USD/h", "job": "USD", "capex": "USD", "gpus": "GPUs"}


class Choice(BaseModel):
    """One configuration: the GPU type and the full Strategy (`estimate` evaluates exactly this)."""

    model_config = ConfigDict(frozen=True)
    gpu: str
    strategy: Strategy
    objective: float = Field(..., description="primary objective, in OBJECTIVE_UNITS")
    gpu_time_per_token: Optional[int] = Field(
        None, description="GPU-seconds per token in solve_time.GAMMA_UNIT, when the time model decided")


class SolveResult(BaseModel):
    status: str = Field(..., description="OPTIMAL | FEASIBLE | INFEASIBLE | UNKNOWN")
    objective: Optional[float] = None
    bound: Optional[float] = Field(None, description="proved lower bound of the primary objective")
    gap: Optional[float] = Field(None, description="(objective - bound) / objective")
    seconds: float
    choice: Optional[Choice] = None


@dataclass
class _Blocks:
    """The literals of each block, in the order of the domain's options."""

    gpu: list
    mp: list                 # (tp, pp) pairs
    dp: list
    ep: list
    zero: list
    regime: list
    checkpointing: list
    loss: list
    micro_batch: list
    lora_rank: list
    kv_cache: list

    def all(self) -> list[list]:
        return [self.gpu, self.mp, self.dp, self.ep, self.zero, self.regime, self.checkpointing, self.loss,
                self.micro_batch, self.lora_rank, self.kv_cache]


def _weighted(lits: list, coefs) -> cp_model.LinearExpr:
    pairs = [(x, int(c)) for x, c in zip(lits, coefs) if c]
    if not pairs:
        return cp_model.LinearExpr.constant(0)
    return cp_model.LinearExpr.weighted_sum([p[0] for p in pairs], [p[1] for p in pairs])


class PlanSolver:
    """Owns the CpModel of one instance and its variable containers.

    relaxed=False: the domains already carry the pins and defaults (the normal, small model).
    relaxed=True: full domains, every GPU type; each Restriction gets a literal that enforces it
    (`restriction_lits`), for assumptions and relaxation in planner/solve_diagnosis.py.
    slack=True: capacity may be exceeded by `self.slack` MiB, which is minimised (how far from
    fitting the best configuration is)."""

    def __init__(self, inst: Instance, relaxed: bool = False, slack: bool = False):
        self.inst = inst
        self.slack = None
        self.time = None
        self.tie_break = False
        self._phase2 = False
        self.domains = Domains(inst, relaxed=relaxed)
        self.relaxed = self.domains.relaxed
        self.model = cp_model.CpModel()
        self.restriction_lits: dict[Restriction, cp_model.IntVar] = {}
        self._ub: dict[int, int] = {}         # upper bounds of the integer variables, by index
        if self.domains.empty:
            self.tables = None
            self.model.add_bool_or([])        # nothing to choose from: infeasible by construction
            return
        self.tables = build_tables(self.domains)
        if slack:
            self.slack = self.model.new_int_var(0, MAX_MIB, "over_capacity_mib")
        self._blocks()
        self._layout()
        self._gpu_links()
        if inst.is_training:
            self._training_memory()
        else:
            self._serving_memory()
        # the time model enters when the objective or a limit needs it, else only for the tie-break
        # (after the objective is proved: PlanSolver.solve), which keeps the first solve small
        if inst.objective == "job" or any(getattr(inst.limits, f) is not None for f in TIME_LIMITS):
            self.add_time_model()
        self._restrictions()
        self._objective()
        if slack:
            self.model.minimize(self.slack)
            self.tie_break = False

    # --- variables -----------------------------------------------------------------------------
    def _one_hot(self, name: str, options) -> list:
        if len(options) == 1:
            return [self.model.new_constant(1)]
        lits = [self.model.new_bool_var(f"{name}[{o}]") for o in options]
        self.model.add_exactly_one(lits)
        return lits

    def _channel(self, name: str, block: list, values: list) -> dict:
        """A literal per distinct value of a derived field: lit == sum of the block's literals."""
        out = {}
        for v in dict.fromkeys(values):
            members = [x for x, val in zip(block, values) if val == v]
            if len(members) == len(block):
                out[v] = self.model.new_constant(1)
                continue
            lit = self.model.new_bool_var(f"{name}={v}")
            self.model.add(lit == sum(members))
            out[v] = lit
        return out

    def _flag(self, name: str, block: list, values: list):
        """One literal for a Boolean property of the chosen option (constant when all agree)."""
        lit = self._channel(name, block, values).get(True)
        return self.model.new_constant(0) if lit is None else lit

    def _int(self, name: str, ub: int = MAX_MIB) -> cp_model.IntVar:
        # CP-SAT 9.15 proves false infeasibility on half-reified bounds of variables whose domain
        # exceeds 2**32 (reproduced on a 6-variable model): every variable stays below 2**31
        if ub >= 2 ** 31:
            raise OverflowError(f"{name}: domain up to {ub} would exceed what CP-SAT handles reliably")
        v = self.model.new_int_var(0, int(ub), name)
        self._ub[v.index] = int(ub)
        return v

    def _at_least(self, name: str, cases) -> cp_model.IntVar:
        """v >= value under each (enforcement literals, value) case; the cases cover every assignment."""
        v = self._int(name, max(int(value) for _, value in cases))
        for lits, value in cases:
            if value:
                self.model.add(v >= int(value)).only_enforce_if(list(lits))
        return v

    def _scaled(self, name: str, var, lits: list, factors: list[int], divide: bool = False):
        """var x factor, or ceil(var / factor), for the factor of the chosen option of a block."""
        ub = self._ub[var.index]
        out = self._int(name, ub if divide else ub * max(factors))
        for lit, f in zip(lits, factors):
            (self.model.add(out * f >= var) if divide else self.model.add(out >= f * var)).only_enforce_if(lit)
        return out

    def _blocks(self) -> None:
        d = self.domains
        self.x = _Blocks(
            gpu=self._one_hot("gpu", [a.gpu.name for a in d.gpus]),
            mp=self._one_hot("tp,pp", d.mp_options),
            dp=self._one_hot("dp", d.dp_options),
            ep=self._one_hot("ep", d.ep_options),
            zero=self._one_hot("zero", d.zero),
            regime=self._one_hot("regime", d.regimes),
            checkpointing=self._one_hot("ckpt", d.checkpointing),
            loss=self._one_hot("loss", d.loss),
            micro_batch=self._one_hot("mb", d.micro_batch),
            lora_rank=self._one_hot("rank", d.lora_rank),
            kv_cache=self._one_hot("kv", d.kv_cache),
        )
        x = self.x
        self.tp = self._channel("tp", x.mp, [tp for tp, _ in d.mp_options])
        self.pp = self._channel("pp", x.mp, [pp for _, pp in d.mp_options])
        self.precision = self._channel("precision", x.regime, [r.precision for r in d.regimes])
        self.zero_at_least = {k: self._flag(f"zero>={k}", x.zero, [z >= k for z in d.zero]) for k in (1, 2, 3)}
        self.gt1 = {"tp": self._flag("tp>1", x.mp, [tp > 1 for tp, _ in d.mp_options]),
                    "pp": self._flag("pp>1", x.mp, [pp > 1 for _, pp in d.mp_options]),
                    "dp": self._flag("dp>1", x.dp, [v > 1 for v in d.dp_options]),
                    "ep": self._flag("ep>1", x.ep, [v > 1 for v in d.ep_options])}

    def _layout(self) -> None:
        """world = tp * pp * dp over the valid sizes; ep divides dp; overhead and capacity."""
        d, t, m, x = self.domains, self.tables, self.model, self.x
        self.dp = self._int("dp", max(d.dp_options))
        m.add(self.dp == _weighted(x.dp, d.dp_options))
        self.n = self._int("gpus", MAX_GPUS)
        for (tp, pp), lit in zip(d.mp_options, x.mp):
            m.add(self.n == tp * pp * self.dp).only_enforce_if(lit)
        m.add_linear_expression_in_domain(self.n, cp_model.Domain.from_values(sorted({v.n for v in d.layouts})))
        for ep, lit in zip(d.ep_options, x.ep):
            bad = [y for y, dp in zip(x.dp, d.dp_options) if dp % ep]
            if bad:
                m.add(sum(bad) + lit <= 1)
        groups = sum(self.gt1.values())
        self.fixed_mib = t.overhead_base_mib + t.overhead_group_mib * groups
        self.cap_mib = _weighted(x.gpu, t.cap_mib)
        # no single buffer can exceed the largest GPU (with a slack: 512 GiB, x3 stays below 2**31)
        self.cap_kib = 2 ** 29 if self.slack is not None else int(t.cap_mib.max()) * 1024

    def _gpu_links(self) -> None:
        """Per-type counts (zero unless chosen) and what each type rules out."""
        d, m, x = self.domains, self.model, self.x
        self.count = []
        for a, lit in zip(d.gpus, x.gpu):
            c = m.new_int_var(0, MAX_GPUS, f"count[{a.gpu.name}]")
            m.add(c == self.n).only_enforce_if(lit)
            m.add(c == 0).only_enforce_if(~lit)
            self.count.append(c)
            # TP inside a node; the world is part of one node or whole nodes, within the cap
            sizes = sorted({v.n for v in d.layouts if d.layout_fits_gpu(v, a)})
            m.add_linear_expression_in_domain(self.n, cp_model.Domain.from_values(sizes)).only_enforce_if(lit)
            bad = [y for y, (tp, _) in zip(x.mp, d.mp_options) if tp > a.gpu.gpus_per_node]
            bad += [y for y, r in zip(x.regime, d.regimes) if not d.regime_fits_gpu(r, a.gpu)]
            if bad:
                m.add(sum(bad) == 0).only_enforce_if(lit)

    # --- parameters on a GPU -------------------------------------------------------------------
    def _param_class(self, label: str, c: ParamClass, shardable: bool = True) -> dict:
        """ParamClass as variables: own, experts, experts/ep, unsharded = own + ceil(experts / ep),
        and (when shardable) sharded = ceil((own + experts) / dp). Made once per table."""
        x, d, m = self.x, self.domains, self.model
        key = (id(c.own), id(c.experts))
        out = self._classes.get(key)
        if out is None:
            own = self._int(f"{label}_{c.name}_own", c.own.max())
            ranks = x.lora_rank if c.own.shape[0] > 1 else [None]
            for ri, rank in enumerate(ranks):
                m.add(own >= _weighted(x.mp, c.own[ri])).only_enforce_if([rank] if rank is not None else [])
            out = {"own": own, "unsharded": own, "total": own, "sharded": None}
            if c.experts.any():
                experts = self._int(f"{label}_{c.name}_experts", c.experts.max())
                m.add(experts == _weighted(x.mp, c.experts))
                per_ep = self._scaled(f"{label}_{c.name}_experts/ep", experts, x.ep, d.ep_options, divide=True)
                out["unsharded"] = self._int(f"{label}_{c.name}_unsharded", c.own.max() + c.experts.max())
                m.add(out["unsharded"] == own + per_ep)
                out["total"] = self._int(f"{label}_{c.name}_total", c.own.max() + c.experts.max())
                m.add(out["total"] == own + experts)
                out.update(experts=experts, **{"experts/ep": per_ep})
            self._classes[key] = out
        if shardable and out["sharded"] is None:
            out["sharded"] = self._scaled(f"{label}_{c.name}/dp", out["total"], x.dp, d.dp_options, divide=True)
        return out

    # --- memory: training ----------------------------------------------------------------------
    def _training_memory(self) -> None:
        d, t, m = self.domains, self.tables, self.model
        x = self.x
        # gradient accumulation: derived from micro-batch and dp (or pinned); no replica beyond the batch
        self.ga = self._int("grad_accum", t.grad_accum.max())
        for i, (lit, mb) in enumerate(zip(x.micro_batch, d.micro_batch)):
            m.add(self.ga == _weighted(x.dp, t.grad_accum[i])).only_enforce_if(lit)
            if "grad_accum" not in self.inst.pins:
                m.add(self.dp * mb <= self.inst.global_batch).only_enforce_if(lit)
        # ZeRO-Offload moves the optimizer of a ZeRO stage >= 1 (DeepSpeed)
        offload = [lit for lit, r in zip(x.regime, d.regimes) if r.offload]
        if offload:
            m.add(sum(offload) == 0).only_enforce_if(~self.zero_at_least[1])
        if "zero" not in self.inst.pins and 0 in d.zero and 1 in d.zero and 1 in d.dp_options:
            # symmetry: without data parallelism every ZeRO stage is the same; keep stage 0, or 1 if
            # offloading (which needs it)
            dp1 = x.dp[d.dp_options.index(1)]
            m.add(dp1 + self.zero_at_least[2] <= 1)
            m.add(dp1 + self.zero_at_least[1] <= 1 + sum(offload))
        # gradients live through forward/backward (regime, accumulation or pipeline)
        self.persist = m.new_bool_var("grads_persist")
        m.add(self.persist >= _weighted(x.regime, t.persist))
        m.add(self.persist >= self.gt1["pp"])
        m.add(self.ga <= 1).only_enforce_if(~self.persist)
        self._classes: dict = {}
        self._activation_bases()
        self._training_stage(0, "first")
        if any(pp > 1 for _, pp in d.mp_options):
            self._training_stage(1, "last")

    def _per_gpu_kib(self, name: str, cases, per_tp_ep: bool = False) -> cp_model.IntVar:
        """KiB on one GPU of a per-sequence byte table: ceil(bytes x micro_batch / (tp x 1024)),
        computed here for every (table key, micro-batch, tp) case. per_tp_ep: a per-micro-batch table
        split over tp x ep instead (no micro-batch factor). A case above every GPU's capacity is
        ruled out by a clause rather than carried in a huge variable domain (see _int)."""
        d, x = self.domains, self.x
        factors = [((self.tp[tp], x.ep[ei]), 1, tp * ep) for tp in self.tp for ei, ep in enumerate(d.ep_options)] \
            if per_tp_ep else [((mb_lit, self.tp[tp]), mb, tp) for mb, mb_lit in zip(d.micro_batch, x.micro_batch)
                               for tp in self.tp]
        values = [(list(lits) + list(f_lits), ceil_div(int(v) * num, den * KIB)) for lits, v in cases
                  for f_lits, num, den in factors]
        v = self._int(name, min(max(val for _, val in values), self.cap_kib))
        for lits, val in values:
            if val > self.cap_kib:
                self.model.add_bool_or([~lit for lit in lits])
            elif val:
                self.model.add(v >= val).only_enforce_if(lits)
        return v

    def _activation_bases(self) -> None:
        """Activation KiB per micro-batch on one GPU from the tables (precision, ckpt, rank, loss)."""
        d, t, x, m = self.domains, self.tables, self.x, self.model
        P = [self.precision[p] for p in t.precisions]
        C, K, F = range(len(d.checkpointing)), range(len(d.lora_rank)), range(len(d.loss))
        self.act = {
            "stored": self._per_gpu_kib("act_stored", [((P[p], x.checkpointing[c], x.lora_rank[k]), t.act_stored[p, c, k])
                                                       for p in range(len(P)) for c in C for k in K]),
            "layer": self._per_gpu_kib("act_layer", [((P[p], x.lora_rank[k]), t.act_layer[p, k])
                                                     for p in range(len(P)) for k in K]),
            "head": self._per_gpu_kib("act_head", [((P[p],), t.act_head[p]) for p in range(len(P))]),
            "loss_fwd": self._per_gpu_kib("act_loss_fwd", [((P[p], x.loss[f]), t.act_loss_fwd[p, f])
                                                           for p in range(len(P)) for f in F]),
            "loss_bwd": self._per_gpu_kib("act_loss_bwd", [((P[p], x.loss[f]), t.act_loss_bwd[p, f])
                                                           for p in range(len(P)) for f in F]),
            # PEFT on MoE: each layer's merged expert weights, per micro-batch, split over tp and ep
            "merged": self._per_gpu_kib("act_merged", [((P[p],), t.act_merge[p]) for p in range(len(P))],
                                        per_tp_ep=True),
        }
        ckpt = self._flag("checkpointing", x.checkpointing, [c != "none" for c in d.checkpointing])
        full = self._flag("full checkpointing", x.checkpointing, [c == "full" for c in d.checkpointing])
        # stored per layer and micro-batch; the merged weights are kept unless fully checkpointed
        self.act["kept"] = self._int("act_kept", self.cap_kib)
        m.add(self.act["kept"] >= self.act["stored"] + self.act["merged"]).only_enforce_if(~full)
        m.add(self.act["kept"] >= self.act["stored"]).only_enforce_if(full)
        # the backward of one layer: recomputed (with checkpointing) on top of the stored inputs
        self.act["last_layer"] = self._int("act_last_layer", self.cap_kib)
        m.add(self.act["last_layer"] >= self.act["layer"] + self.act["merged"])
        self.act["recompute"] = self._int("act_recompute", self.cap_kib)
        m.add(self.act["recompute"] >= self.act["last_layer"]).only_enforce_if(ckpt)
        # a trained lm_head's gradient (last stage): buffers of its size meet a fused loss's chunks,
        # and a tied embedding's contribution at the end of the backward
        hg = self._at_least("head_grad", [((P[p], self.tp[tp]), ceil_div(int(t.head_grad[p, i]), KIB))
                                          for p in range(len(P)) for i, tp in enumerate(d.tp_options)])
        lb = self.act["loss_bwd"]
        self.act["loss_bwd_grad"] = lbg = self._int("loss_bwd_with_head_grad", 2 * self.cap_kib)
        fused = self._flag("fused loss", x.loss, [f == "fused" for f in d.loss])
        m.add(lbg >= lb)
        for p in range(len(P)):
            during, at_sum, _ = (int(v) for v in t.head_grad_k[p])
            m.add(lbg >= lb + during * hg).only_enforce_if([fused, P[p]])
            m.add(lbg >= at_sum * hg).only_enforce_if([fused, P[p]])
        self.act["tied"] = self._int("tied_embedding_extra", int(t.head_grad_k.max()) * self._ub[hg.index])
        if d.inst.model.tie_word_embeddings:
            for p in range(len(P)):
                m.add(self.act["tied"] >= int(t.head_grad_k[p, 2]) * hg).only_enforce_if(P[p])
        # 1F1B: the first stage holds min(pp, grad_accum) micro-batches
        top = max(self.pp)
        self.in_flight = self._int("in_flight", top)
        m.add_min_equality(self.in_flight, [_weighted(x.mp, [pp for _, pp in d.mp_options]), self.ga])
        self.in_flight_lit = {f: m.new_bool_var(f"in_flight={f}") for f in range(1, top + 1)}
        m.add_exactly_one(self.in_flight_lit.values())
        for f, lit in self.in_flight_lit.items():
            m.add(self.in_flight == f).only_enforce_if(lit)

    def _training_stage(self, si: int, label: str) -> None:
        """memory._stage_training for the first (si=0) or last (si=1, only when pp > 1) stage."""
        d, t, m, x = self.domains, self.tables, self.model, self.x
        st = t.stages[si]
        first = si == 0
        # parameters per class on this GPU (KiParams), sharded from the class's ZeRO stage on
        Q = []
        for c in st.classes:
            parts = self._param_class(label, c)
            v = self._int(f"{label}_{c.name}", self._ub[parts["unsharded"].index])
            sh = self.zero_at_least[c.threshold]
            m.add(v >= parts["unsharded"]).only_enforce_if(~sh)
            m.add(v >= parts["sharded"]).only_enforce_if(sh)
            Q.append(v)
        gather = self._int(f"{label}_zero3_gather", t.gather.max())
        for (ti, tp), (ei, ep) in ((a, b) for a in enumerate(d.tp_options) for b in enumerate(d.ep_options)):
            m.add(gather >= int(t.gather[ti, ei])).only_enforce_if(
                [self.tp[tp], x.ep[ei], self.gt1["dp"], self.zero_at_least[3]])
        Q.append(gather)
        terms = {}
        for term in STATE_TERMS:
            coef = st.coef[term]
            v = self._int(f"{label}_{term}_mib")
            for ri, lit in enumerate(x.regime):
                if coef[ri].any():
                    m.add(v * STATE_DEN >= _weighted(Q, coef[ri])).only_enforce_if(lit)
            terms[term] = v
        W, G, O, T = (terms[k] for k in STATE_TERMS)
        g_live = self._int(f"{label}_gradients_live_mib")
        m.add(g_live >= G).only_enforce_if(self.persist)
        # gradients during the first layer's backward: all but that layer's own share
        g_last = self._int(f"{label}_gradients_last_layer_mib")
        for (mi, mp_lit), (ei, ep_lit), (ki, rank_lit) in ((a, b, c) for a in enumerate(x.mp)
                                                            for b in enumerate(x.ep) for c in enumerate(x.lora_rank)):
            m.add(g_last * KEEP_SCALE >= int(st.keep_last[ki, mi, ei]) * G).only_enforce_if([mp_lit, ep_lit, rank_lit])
        # autocast's bf16 weight copies, alive from the forward to each layer's backward
        cache_params = self._param_class(label, st.cache, shardable=False)["unsharded"]
        cache = self._int(f"{label}_autocast_cache_mib")
        for p, lit in enumerate(self.precision[v] for v in t.precisions):
            if t.cache_coef[p]:
                m.add(cache * STATE_DEN >= int(t.cache_coef[p]) * cache_params).only_enforce_if(lit)
        # activations of this stage, in bytes
        kept = self.act["kept"]
        stack = self._int(f"{label}_stack", self.cap_kib)
        for p, pp_lit in self.pp.items():
            layers = int(st.layers[next(i for i, (_, pp) in enumerate(d.mp_options) if pp == p)])
            if first:
                for f in range(1, p + 1):
                    m.add(stack >= layers * f * kept).only_enforce_if([pp_lit, self.in_flight_lit[f]])
            elif p > 1:
                m.add(stack >= layers * kept).only_enforce_if(pp_lit)
        head_fwd, head_bwd = self._int(f"{label}_head_fwd", 3 * self.cap_kib), self._int(f"{label}_head_bwd", 3 * self.cap_kib)
        tied = self._int(f"{label}_tied_extra", self._ub[self.act["tied"].index])
        # the loss is on the last stage: on the first one only when pp = 1 (so is a tied embedding's extra)
        has_head = (self.pp[1] if 1 in self.pp else m.new_constant(0)) if first else m.new_constant(1)
        m.add(head_fwd >= self.act["head"] + self.act["loss_fwd"]).only_enforce_if(has_head)
        m.add(head_bwd >= self.act["head"] + self.act["loss_bwd_grad"]).only_enforce_if(has_head)
        if first:
            m.add(tied >= self.act["tied"]).only_enforce_if(has_head)
        acts = {"forward": stack + head_fwd, "backward": stack + head_bwd,
                "backward_recompute": stack + self.act["recompute"], "backward_last_layer": self.act["last_layer"],
                "backward_end": tied}
        act_mib = {}
        for phase, expr in acts.items():
            a = self._int(f"{label}_act_{phase}_mib")
            m.add(a * 1024 >= expr)
            act_mib[phase] = a
        allocated = {
            "forward": W + g_live + O + act_mib["forward"] + cache,
            "backward": W + g_live + O + act_mib["backward"] + cache,
            "backward_recompute": W + g_live + O + act_mib["backward_recompute"],
            "backward_last_layer": W + g_last + O + act_mib["backward_last_layer"],
            "backward_last_layer_live": W + g_live + O + act_mib["backward_last_layer"],
            "backward_end": W + G + O + act_mib["backward_end"],
            "optimizer": W + G + O + T,
        }
        self._fit(label, allocated, None if first else self.gt1["pp"])

    def _fit(self, label: str, allocated: dict, enforce=None) -> None:
        """allocated x (1 + fragmentation) + fixed overhead <= capacity, for every phase."""
        frag = self.tables.frag
        den, num = frag.denominator, frag.numerator
        for phase, expr in allocated.items():
            v = self._int(f"{label}_{phase}_alloc_mib")
            self.model.add(v >= expr)
            cap = self.cap_mib if self.slack is None else self.cap_mib + self.slack
            ct = self.model.add((den + num) * v + den * self.fixed_mib <= den * cap)
            if enforce is not None:
                ct.only_enforce_if(enforce)

    # --- memory: serving -----------------------------------------------------------------------
    def _serving_memory(self) -> None:
        d, t, m, x = self.domains, self.tables, self.model, self.x
        self._classes = {}
        lin = self._param_class("serve", t.serve_lin, shardable=False)["unsharded"]
        b16 = _weighted(x.mp, t.serve_b16)
        w = self._int("weights_mib")
        for lit, fmt in zip(x.regime, t.serve_fmt):
            m.add(w * STATE_DEN >= int(fmt) * lin + 2 * COEF_SCALE * b16).only_enforce_if(lit)
        # KV cache: bytes per token (tp, pp, format) x sequences per replica (dp) x context, in KiB
        per_token = self._at_least("kv/token", [((mp, kv), t.serve_kv_token[i, k]) for i, mp in enumerate(x.mp)
                                                for k, kv in enumerate(x.kv_cache)])
        kv_kib = self._int("kv_kib", self.cap_kib)
        for y, c in zip(x.dp, t.serve_concurrency):
            m.add(kv_kib * KIB >= int(c) * self.inst.context * per_token).only_enforce_if(y)
        kv = self._int("kv_cache_mib")
        m.add(kv * 1024 >= kv_kib)
        allocated = {}
        for i, phase in enumerate(("prefill", "decode")):
            a = self._int(f"{phase}_act_mib")
            for tp in self.tp:   # buffers scale as 1/tp (memory.serving_memory)
                m.add(a * (MIB * tp) >= _weighted(x.dp, t.serve_act[i])).only_enforce_if(self.tp[tp])
            allocated[phase] = w + kv + a
        self._fit("serve", allocated)

    def add_time_model(self) -> None:
        if self.time is None:
            from planner.solve_time import TimeModel, build_time_tables
            self.time = TimeModel(self, build_time_tables(self.tables))

    # --- restrictions (relaxed model) and limits -----------------------------------------------------
    def _field_block(self, field: str):
        d, x = self.domains, self.x
        if field in ("tp", "pp"):
            return x.mp, [mp[0 if field == "tp" else 1] for mp in d.mp_options]
        if field in ("dp", "ep"):
            return getattr(x, field), getattr(d, f"{field}_options")
        if field in ("precision", "optimizer", "offload", "weights"):
            return x.regime, [getattr(r, field) for r in d.regimes]
        block = {"zero": x.zero, "checkpointing": x.checkpointing, "loss": x.loss, "micro_batch": x.micro_batch,
                 "lora_rank": x.lora_rank, "kv_cache": x.kv_cache}[field]
        return block, list(getattr(d, field))

    def _restrictions(self) -> None:
        """Limits always; pins, defaults, GPU list and inventory only in the relaxed model."""
        m = self.model
        for r in self.domains.restrictions:
            if r.kind != "limit" and not self.relaxed:
                continue
            lit = m.new_bool_var(f"restriction[{r.text}]") if self.relaxed else None
            enforce = [lit] if lit is not None else []
            if r.field == "num_gpus":
                m.add(self.n == r.allowed[0]).only_enforce_if(enforce)
            elif r.kind in ("pin", "default"):
                block, values = self._field_block(r.field)
                banned = [b for b, v in zip(block, values) if v not in r.allowed]
                if banned:
                    m.add(sum(banned) == 0).only_enforce_if(enforce)
            elif r.kind == "gpus":
                banned = [g for g, a in zip(self.x.gpu, self.domains.gpus) if a.gpu.name not in r.allowed]
                if banned:
                    m.add(sum(banned) == 0).only_enforce_if(enforce)
            elif r.kind == "inventory":
                name = r.field.split(":", 1)[1]
                i = [a.gpu.name for a in self.domains.gpus].index(name)
                m.add(self.count[i] <= r.allowed[0]).only_enforce_if(enforce)
            else:
                self._limit(r, enforce)
            if lit is not None:
                self.restriction_lits[r] = lit

    def _limit(self, r: Restriction, enforce: list) -> None:
        """Caps in integer units, each rounded so that a plan never looks better than it is."""
        value = getattr(self.inst.limits, r.field)
        m = self.model
        if r.field == "max_hourly_usd":
            m.add(self.hourly_milli <= int(value * 1000)).only_enforce_if(enforce)
        elif r.field == "max_capex_usd":
            m.add(self.capex_usd <= int(value)).only_enforce_if(enforce)
        elif r.field == "min_throughput":
            # tokens/s = GPUs / GPU-seconds per token: n / (gamma x GAMMA_UNIT) >= X
            m.add(self.n * round(1 / GAMMA_UNIT) >= math.ceil(value) * self.time.gamma).only_enforce_if(enforce)
        elif r.field == "deadline_hours":
            # tokens x gamma x GAMMA_UNIT / n <= hours x 3600, in milliseconds
            m.add(math.ceil(self.inst.tokens * GAMMA_UNIT * 1000) * self.time.gamma
                  <= int(value * 3600 * 1000) * self.n).only_enforce_if(enforce)
        elif r.field == "budget_usd":
            m.add(self.job_cents <= int(value * 100)).only_enforce_if(enforce)

    @property
    def job_cents(self):
        """Cost of the job of `tokens` tokens in cents: price per GPU-hour x GPU-hours per token x tokens."""
        if getattr(self, "_job", None) is None:
            gamma = self.time.gamma
            self._job = self._int("job_cents", 2 ** 31 - 1)
            for lit, a in zip(self.x.gpu, self.domains.gpus):
                per_gamma = Fraction(a.gpu.price_hourly.usd * 100 * self.inst.tokens * GAMMA_UNIT / 3600)
                per_gamma = per_gamma.limit_denominator(2 ** 20)
                self.model.add(self._job * per_gamma.denominator >= math.ceil(per_gamma * per_gamma.denominator)
                               * gamma).only_enforce_if(lit)
        return self._job

    @property
    def hourly_milli(self):
        return _weighted(self.count, [_milli(a.gpu.price_hourly.usd) for a in self.domains.gpus])

    @property
    def capex_usd(self):
        return _weighted(self.count, [_usd(a.gpu.price_purchase.usd) for a in self.domains.gpus])

    # --- objective -------------------------------------------------------------------------------
    def _objective(self) -> None:
        """Lexicographic (primary, fewer GPUs) as primary * (MAX_GPUS + 1) + GPUs."""
        obj = self.inst.objective
        self.primary = {"hourly": lambda: self.hourly_milli, "capex": lambda: self.capex_usd,
                        "gpus": lambda: self.n, "job": lambda: self.job_cents}[obj]()
        self.primary_scale = {"hourly": 1000, "job": 100}.get(obj, 1)
        self.tie_weight = MAX_GPUS + 1 if obj != "gpus" else 1
        self.lexicographic = self.primary * self.tie_weight + (self.n if obj != "gpus" else 0)
        self.model.minimize(self.lexicographic)
        self.tie_break = True

    def minimize_releases(self, weights: dict[Restriction, int]) -> None:
        """Diagnosis: restriction literals become choices; release as little (by weight) as possible,
        then the usual objective."""
        released = sum(w * (1 - self.restriction_lits[r]) for r, w in weights.items())
        scale = self.primary_bound() * self.tie_weight + MAX_GPUS + 1
        self.model.minimize(released * scale + self.primary * self.tie_weight + self.n)
        self.tie_break = False

    def primary_bound(self) -> int:
        d = self.domains
        per_gpu = {"hourly": max(_milli(a.gpu.price_hourly.usd) for a in d.gpus),
                   "capex": max(_usd(a.gpu.price_purchase.usd) for a in d.gpus), "gpus": 1}[self.inst.objective]
        return per_gpu * MAX_GPUS

    # --- solving -----------------------------------------------------------------------------------
    def solve(self, time_limit: float = 10.0, workers: int = 4, assumptions: Optional[list] = None) -> SolveResult:
        """Minimise the objective (then fewer GPUs); when that is proved optimal and the time model is
        present, a second solve keeps both at their optimum and minimises GPU-seconds per token
        (the highest throughput), lexicographically as the CP-SAT primer does it."""
        start = time.perf_counter()
        code, solver = self._run(time_limit, workers, assumptions or [])
        timed = self.time is not None
        if code == cp_model.OPTIMAL and self.tie_break and not self.relaxed:
            self.add_time_model()
            # hold the objective and the GPU count at their optimum (equalities propagate at once)
            hold = self.model.new_bool_var(f"hold_objective_{len(self.model.proto.constraints)}")
            self.model.add(self.primary == solver.value(self.primary)).only_enforce_if(hold)
            self.model.add(self.n == solver.value(self.n)).only_enforce_if(hold)
            self.model.minimize(self.time.gamma)
            left = max(time_limit - (time.perf_counter() - start), 0.1)
            self._phase2 = True
            code2, solver2 = self._run(left, workers, (assumptions or []) + [hold])
            self._phase2 = False
            self.model.minimize(self.lexicographic)
            if code2 in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                solver, timed = solver2, True
        seconds = time.perf_counter() - start
        self.solver = solver
        status = STATUS_NAMES[code]
        if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return SolveResult(status=status, seconds=seconds)
        choice = self.choice(solver)
        if timed:
            choice = choice.model_copy(update={"gpu_time_per_token": solver.value(self.time.gamma)})
        if code == cp_model.OPTIMAL:
            bound = choice.objective
        else:
            bound = (self._bound // self.tie_weight) / self.primary_scale
        gap = (choice.objective - bound) / choice.objective if choice.objective else 0.0
        return SolveResult(status=status, objective=choice.objective, bound=bound, gap=gap, seconds=seconds,
                           choice=choice)

    def _run(self, time_limit: float, workers: int, assumptions: list):
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = time_limit
        solver.parameters.num_workers = workers
        # CP-SAT 9.15's presolve, and its root probing, declare some of these models infeasible
        # although a solution exists (checked constraint by constraint; google/or-tools#5274, #5293).
        # The factored model is small, so both buy little: they stay off, and the exhaustive tests
        # (tests/test_solver_exhaustive.py) guard the answers.
        solver.parameters.cp_model_presolve = False
        solver.parameters.cp_model_probing_level = 0
        # branching on the literals in the order they were made (GPU, layout, ...) with the LP bound,
        # over a portfolio of 4 workers (even on 2 cores), proved cost and GPU-count optima and the
        # throughput tie-break fastest and most evenly of the settings tried; the job cost (a product
        # of price and time) is proved faster by CP-SAT's default search (benchmarks/planner_speed.py)
        job = self.inst.objective == "job" and self.tie_break and self.model.proto.objective.vars
        solver.parameters.search_branching = cp_model.AUTOMATIC_SEARCH if job and not self._phase2 \
            else cp_model.FIXED_SEARCH
        self.model.clear_assumptions()
        if assumptions:
            self.model.add_assumptions(assumptions)
        code = solver.solve(self.model)
        self.solver = solver
        self._bound = solver.best_objective_bound if code in (cp_model.OPTIMAL, cp_model.FEASIBLE) else None
        return code, solver

    def chosen(self, solver, block: list, options: list):
        for lit, option in zip(block, options):
            if solver.boolean_value(lit):
                return option
        raise RuntimeError("no option chosen in a block")

    def choice(self, solver) -> Choice:
        d, x = self.domains, self.x
        pick = {name: self.chosen(solver, getattr(x, name), getattr(d, name)) for name in (
            "zero", "checkpointing", "loss", "micro_batch", "lora_rank", "kv_cache")}
        gpu = self.chosen(solver, x.gpu, d.gpus)
        tp, pp = self.chosen(solver, x.mp, d.mp_options)
        lay = Layout(tp, pp, self.chosen(solver, x.dp, d.dp_options), self.chosen(solver, x.ep, d.ep_options))
        strategy = d.strategy(lay, self.chosen(solver, x.regime, d.regimes), **pick)
        objective = solver.value(self.primary) / self.primary_scale
        return Choice(gpu=gpu.gpu.name, strategy=strategy, objective=objective)

    def exclude(self, solver) -> None:
        """Forbid the current assignment of every block (for the next-best distinct configuration)."""
        chosen = [next(lit for lit in block if solver.boolean_value(lit)) for block in self.x.all()]
        self.model.add_bool_or([~lit for lit in chosen])


def _milli(usd: float) -> int:
    return int(-(-round(usd * 1e6) // 1000))   # milli-dollars, rounded up


def _usd(usd: float) -> int:
    return int(-(-usd // 1))                     # whole dollars, rounded up

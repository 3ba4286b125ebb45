"""Integer coefficient tables for the planner, produced by the functions `gpuplan estimate` uses.

The memory of planner/memory.py factors into
  model states  = bytes_per_param(regime) x params_on_gpu(tp, pp, ep) / ZeRO shard(stage, dp)
  activations   = bytes_per_sequence(precision, checkpointing, rank, loss) x micro_batch / tp
                  x layers in flight(pp, grad_accum)
so every table here is indexed by one block or two or three small ones, never by their product.
The CP-SAT model (planner/solver.py) and the exhaustive evaluator (planner/exhaustive.py) combine
the same tables with the same integer operations, spelled out in `ParamClass` and `Tables`.

Units and rounding (never below the float model):
  parameters  KiParams (1024 parameters), rounded up; each division by ep or dp rounds up;
  bytes/param fixed point x 2**16 (exact for every weight format in catalog/runtime.toml);
  activations integer bytes per sequence, rounded up; per GPU: x micro_batch / tp in KiB, rounded up;
  every memory term is rounded up to MiB; usable capacity is rounded down to MiB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

import numpy as np

from catalog import runtime_constants
from catalog.schema import ModelArch
from planner import activations as act
from planner import memory as mem
from planner.domains import Domains, Layout, Regime
from planner.params import count_params
from planner.strategy import Strategy

KIB = 2 ** 10
MIB = 2 ** 20
PARAM_UNIT = 1024
COEF_SCALE = 2 ** 16
STATE_DEN = COEF_SCALE * MIB // PARAM_UNIT    # term_MiB * STATE_DEN >= sum(coef * KiParams)
STATE_TERMS = ("weights", "gradients", "optimizer", "step_temp")
KEEP_SCALE = 2 ** 16


def ceil_div(a, b):
    """Integer ceil(a / b) for ints or int64 arrays (b > 0)."""
    return -((-a) // b)


def _kiparams(x: float) -> int:
    return math.ceil(x / PARAM_UNIT - 1e-9)


def _scaled(bytes_per_param: float) -> int:
    return math.ceil(Fraction(bytes_per_param).limit_denominator(COEF_SCALE) * COEF_SCALE)


@dataclass
class ParamClass:
    """Parameters of one class held by one GPU (KiParams):

        unsharded = own[rank, mp] + ceil(experts[mp] / ep)
        sharded   = ceil((own[rank, mp] + experts[mp]) / dp)      when ZeRO stage >= threshold

    (experts split over ep, then over dp/ep by ZeRO: together over dp, as memory._stage_training)."""

    name: str
    threshold: int
    own: np.ndarray          # (ranks or 1, mp options)
    experts: np.ndarray      # (mp options,)

    def unsharded(self, rank, mp, ep):
        return self.own[rank, mp] + ceil_div(self.experts[mp], ep)

    def sharded(self, rank, mp, dp):
        return ceil_div(self.own[rank, mp] + self.experts[mp], dp)


@dataclass
class StageTables:
    """One pipeline stage (first: always; last: only when pp > 1)."""

    classes: list[ParamClass]
    coef: dict[str, np.ndarray]       # state term -> (regimes, classes + 1) bytes/param x COEF_SCALE;
                                      # the last column multiplies the ZeRO-3 gather
    layers: np.ndarray                # decoder layers held (mp options)
    has_head: np.ndarray              # 0/1: the stage computes logits and loss (mp options)
    cache: ParamClass                 # matmul weights on this GPU (autocast keeps a bf16 copy of each)
    keep_last: np.ndarray             # (ranks, mp, ep) share of the gradients alive during the first
                                      # layer's backward (1 - its own share), x KEEP_SCALE, rounded up


@dataclass
class Tables:
    """Everything the solver and the exhaustive evaluator need, as integers."""

    domains: Domains
    precisions: tuple[str, ...]
    regime_precision: np.ndarray      # index into precisions (regimes)
    cap_mib: np.ndarray               # usable MiB per GPU type (gpus)
    frag: Fraction                    # allocator fragmentation as a share of allocated bytes
    overhead_base_mib: int            # CUDA context (+ CUDA graphs when serving)
    overhead_group_mib: int           # NCCL buffers per parallel group in use (tp, pp, dp, ep > 1)
    stages: list[StageTables] = field(default_factory=list)
    gather: np.ndarray = None         # ZeRO-3 gathered layer, KiParams (tp options, ep options)
    persist: np.ndarray = None        # 0/1 gradients live through forward/backward by regime alone
    # activations, integer bytes per sequence (training)
    act_stored: np.ndarray = None     # (precisions, checkpointing, ranks) per layer
    act_layer: np.ndarray = None      # (precisions, ranks) one layer without checkpointing
    act_head: np.ndarray = None       # (precisions,) final norm and lm_head input
    act_loss_fwd: np.ndarray = None   # (precisions, losses)
    act_loss_bwd: np.ndarray = None   # (precisions, losses)
    act_merge: np.ndarray = None      # (precisions,) PEFT fused-expert W + BA per layer and micro-batch
    head_grad: np.ndarray = None      # (precisions, tp options) lm_head weight gradient, bytes on a GPU
    head_grad_k: np.ndarray = None    # (precisions, 3) buffers of that size: during a fused loss chunk,
                                      # at a summation, tied-embedding extra (activations.head_grad_partials)
    cache_coef: np.ndarray = None     # (precisions,) autocast cache bytes/param x COEF_SCALE
    grad_accum: np.ndarray = None     # (micro_batches, dp options)
    # serving
    serve_lin: ParamClass = None      # quantizable linear weights (own: dense, experts: MoE)
    serve_b16: np.ndarray = None      # KiParams kept in 16 bit: embeddings, norms (mp options)
    serve_fmt: np.ndarray = None      # bytes/param x COEF_SCALE (regimes)
    serve_kv_token: np.ndarray = None  # KV bytes per token on one GPU (mp options, kv formats)
    serve_concurrency: np.ndarray = None  # sequences per replica (dp options)
    serve_act: np.ndarray = None      # (2 phases: prefill, decode; dp options) bytes at tp = 1

    def fixed_mib(self, tp, pp, dp, ep):
        groups = (np.asarray(tp) > 1).astype(np.int64) + (np.asarray(pp) > 1) + (np.asarray(dp) > 1) + \
            (np.asarray(ep) > 1)
        return self.overhead_base_mib + self.overhead_group_mib * groups


# --- representative strategies ---------------------------------------------------------------------

def _probe(d: Domains, lay: Layout | None = None, r: Regime | None = None, **fields) -> Strategy:
    """A Strategy with the given options and neutral values elsewhere (ga=1: no pipeline/accumulation)."""
    lay = lay or Layout(1, 1, 1, 1)
    r = r or d.regimes[0]
    return d.strategy(lay, r, **fields).model_copy(update={"grad_accum": 1})


def build_tables(d: Domains) -> Tables:
    inst = d.inst
    training = inst.is_training
    precisions = tuple(dict.fromkeys(r.precision for r in d.regimes))
    util = 1.0 if training else Strategy.model_fields["memory_utilization"].default
    # training: the whole GPU (the overhead term holds context, NCCL and fragmentation);
    # serving: the engine's memory-utilization cap (vLLM gpu_memory_utilization)
    cap = np.array([int(a.gpu.memory_bytes * util) // MIB for a in d.gpus], dtype=np.int64)
    frag = Fraction(str(runtime_constants()["overhead"]["fragmentation_fraction"])) if training else Fraction(0)
    base, group = _overhead_parts(inst.workload)
    t = Tables(domains=d, precisions=precisions,
               regime_precision=np.array([precisions.index(r.precision) for r in d.regimes], dtype=np.int64),
               cap_mib=cap, frag=frag, overhead_base_mib=ceil_div(base, MIB), overhead_group_mib=ceil_div(group, MIB))
    if training:
        _training_tables(d, t)
    else:
        _serving_tables(d, t)
    return t


@lru_cache(maxsize=8)
def _overhead_parts(workload: str) -> tuple[int, int]:
    """memory._overhead with nothing allocated, split into a base and a cost per parallel group;
    checked to be exactly that (linear) on every combination of degrees > 1."""
    def fixed(tp, pp, dp, ep):
        s = Strategy(workload=workload, num_gpus=tp * pp * dp, tp=tp, pp=pp, ep=ep)
        return mem._overhead(0.0, s)
    base = fixed(1, 1, 1, 1)
    group = fixed(2, 1, 1, 1) - base
    for tp, pp, dp, ep in ((2, 2, 1, 1), (1, 1, 2, 1), (1, 1, 2, 2), (2, 2, 2, 2)):
        groups = sum(v > 1 for v in (tp, pp, dp, ep))
        if fixed(tp, pp, dp, ep) != base + groups * group:
            raise AssertionError("memory._overhead is no longer base + groups x NCCL; update _overhead_parts")
    return base, group


# --- training ------------------------------------------------------------------------------------------

def _training_tables(d: Domains, t: Tables) -> None:
    m, inst = d.inst.model, d.inst
    peft = inst.is_peft
    for first in (True, False):
        t.stages.append(_stage_tables(d, first, peft))
    t.gather = np.array([[_kiparams(_gpu_params(m, d, tp, 1, ep, d.lora_rank[0], True).largest_layer)
                          for ep in d.ep_options] for tp in d.tp_options], dtype=np.int64)
    t.persist = np.array([int(mem.state_bytes(_probe(d, r=r), trainable_adapter=peft).grads_persist)
                          for r in d.regimes], dtype=np.int64)
    P, C, K, F = len(t.precisions), len(d.checkpointing), len(d.lora_rank), len(d.loss)
    t.act_stored = np.zeros((P, C, K), dtype=np.int64)
    t.act_layer = np.zeros((P, K), dtype=np.int64)
    t.act_head = np.zeros(P, dtype=np.int64)
    t.act_loss_fwd = np.zeros((P, F), dtype=np.int64)
    t.act_loss_bwd = np.zeros((P, F), dtype=np.int64)
    seq = inst.seq_len
    moe_frac = count_params(m).moe_layers / m.num_hidden_layers
    for pi, p in enumerate(t.precisions):
        r = next(r for r in d.regimes if r.precision == p)
        for ki, rank in enumerate(d.lora_rank):
            s = _probe(d, r=r, lora_rank=rank)
            # memory._stage_training: MoE models average dense and MoE layers by their share
            per_layer = ((1 - moe_frac) * act.layer_bytes_per_token(m, s, False)
                         + moe_frac * act.layer_bytes_per_token(m, s, True)) if m.is_moe \
                else act.layer_bytes_per_token(m, s, False)
            t.act_layer[pi, ki] = math.ceil(per_layer * seq)
            for ci, ckpt in enumerate(d.checkpointing):
                stored = {"full": lambda: act.checkpoint_bytes_per_token(m, s),
                          "selective": lambda: act.selective_bytes_per_token(m, s, m.is_moe),
                          "none": lambda: per_layer}[ckpt]()
                t.act_stored[pi, ci, ki] = math.ceil(stored * seq)
        s = _probe(d, r=r)
        t.act_head[pi] = math.ceil(sum(act.head_items(m, s).values()) * seq)
        for fi, loss in enumerate(d.loss):
            fwd, bwd = act.loss_bytes_per_token(m, s.model_copy(update={"loss": loss}))
            t.act_loss_fwd[pi, fi] = math.ceil(fwd * seq)
            t.act_loss_bwd[pi, fi] = math.ceil(bwd * seq)
    t.act_merge = np.zeros(P, dtype=np.int64)
    t.head_grad = np.zeros((P, len(d.tp_options)), dtype=np.int64)
    t.head_grad_k = np.zeros((P, 3), dtype=np.int64)
    t.cache_coef = np.zeros(P, dtype=np.int64)
    for pi, p in enumerate(t.precisions):
        s = _probe(d, r=next(r for r in d.regimes if r.precision == p))
        t.act_merge[pi] = math.ceil(act.peft_expert_merge_bytes(m, s) * moe_frac)
        t.head_grad_k[pi] = act.head_grad_partials(s)
        t.cache_coef[pi] = _scaled(act.autocast_weight_cache_bytes(s))
        if not peft:   # memory._stage_training: a trained lm_head's gradient (last stage)
            t.head_grad[pi] = [math.ceil(count_params(m).lm_head_matmul / tp * mem.state_bytes(s).weight)
                               for tp in d.tp_options]
    t.grad_accum = np.array([[math.ceil(inst.global_batch / (mb * dp)) if "grad_accum" not in inst.pins
                              else inst.pins["grad_accum"] for dp in d.dp_options] for mb in d.micro_batch],
                            dtype=np.int64)


def _stage_tables(d: Domains, first: bool, peft: bool) -> StageTables:
    """memory._stage_training's model states as (regime coefficient) x (parameter class)."""
    m = d.inst.model
    ranks = d.lora_rank

    def table(fn, per_rank=False):
        rows = ranks if per_rank else ranks[:1]
        return np.array([[_kiparams(fn(_gpu_params(m, d, tp, pp, 1, rank, first))) for tp, pp in d.mp_options]
                         for rank in rows], dtype=np.int64)

    def zeros():
        return np.zeros(len(d.mp_options), dtype=np.int64)

    if peft:
        classes = [ParamClass("frozen_linear", 3, table(lambda gp: gp.dense_linear), table(lambda gp: gp.expert)[0]),
                   ParamClass("frozen_16bit", 3, table(lambda gp: gp.embed + gp.small), zeros())]
        lora = table(lambda gp: gp.lora, per_rank=True)
        classes += [ParamClass(f"lora@{k}", k, lora, zeros()) for k in (3, 2, 1)]
    else:
        own = table(lambda gp: gp.dense_linear + gp.embed + gp.small)
        experts = table(lambda gp: gp.expert)[0]
        classes = [ParamClass(f"trained@{k}", k, own, experts) for k in (3, 2, 1)]
    names = [c.name for c in classes] + ["zero3_gather"]
    coef = {term: np.zeros((len(d.regimes), len(names)), dtype=np.int64) for term in STATE_TERMS}
    for ri, r in enumerate(d.regimes):
        for term, by_class in _state_coefficients(_probe(d, r=r), peft).items():
            for name, value in by_class.items():
                coef[term][ri, names.index(name)] = _scaled(value)
    layers = np.array([mem.stage_layers(m, pp) for _, pp in d.mp_options], dtype=np.int64)
    has_head = np.array([1 if (pp == 1 or not first) else 0 for _, pp in d.mp_options], dtype=np.int64)
    cache = ParamClass("autocast_cache", 4, table(lambda gp: gp.dense_linear)
                       + has_head * table(lambda gp: gp.embed), table(lambda gp: gp.expert)[0])
    return StageTables(classes, coef, layers, has_head, cache, _keep_last(d, first, peft))


def _keep_last(d: Domains, first: bool, peft: bool) -> np.ndarray:
    """memory._stage_training `backward_last_layer`: the gradients minus the first layer's (and an
    untied embedding's) share, as a fixed-point factor max(0, 1 - share), rounded up."""
    m = d.inst.model
    workload = d.inst.workload
    out = np.zeros((len(d.lora_rank), len(d.mp_options), len(d.ep_options)), dtype=np.int64)
    for ki, rank in enumerate(d.lora_rank):
        for mi, (tp, pp) in enumerate(d.mp_options):
            for ei, ep in enumerate(d.ep_options):
                gp = _gpu_params(m, d, tp, pp, ep, rank, first)
                # the share depends on the workload (trainable set) and tp only
                probe = Strategy(workload=workload, tp=tp, weights="nf4" if workload == "qlora" else None)
                share = mem.first_layer_grad_share(m, probe, gp, first)
                out[ki, mi, ei] = math.ceil(max(0.0, 1 - share) * KEEP_SCALE)
    return out


def _state_coefficients(s: Strategy, peft: bool) -> dict[str, dict[str, float]]:
    """Bytes per parameter of each state term and parameter class (memory._stage_training)."""
    if peft:
        sb = mem.state_bytes(s, trainable_adapter=True)
        fw = mem.frozen_weight_bytes(s)
        base16 = mem.unquantized_base_bytes(s)
        return {
            "weights": {"frozen_linear": fw, "frozen_16bit": base16, "lora@3": sb.weight, "zero3_gather": 2 * fw},
            "gradients": {"lora@2": 2 if s.offload else sb.grad},
            "optimizer": {"lora@1": 0 if s.offload else sb.master + sb.states},
            "step_temp": {"lora@1": 0 if s.offload else sb.step_temp},
        }
    sb = mem.state_bytes(s)
    return {
        "weights": {"trained@3": sb.weight, "zero3_gather": 2 * sb.weight},
        "gradients": {"trained@2": 2 if s.offload else sb.grad, "zero3_gather": sb.grad},
        "optimizer": {"trained@1": 0 if s.offload else sb.master + sb.states},
        "step_temp": {"trained@1": 0 if s.offload else sb.step_temp},
    }


@lru_cache(maxsize=8192)
def _gpu_params_cached(m: ModelArch, workload: str, targets: tuple, weights: str, tp: int, pp: int, ep: int,
                       rank: int, first: bool) -> mem.GpuParams:
    s = Strategy(workload=workload, num_gpus=tp * pp * ep, tp=tp, pp=pp, ep=ep, lora_rank=rank,
                 lora_targets=targets, weights=weights)
    return mem.gpu_params(m, s, first_stage=first)


def _gpu_params(m, d: Domains, tp: int, pp: int, ep: int, rank: int, first: bool) -> mem.GpuParams:
    return _gpu_params_cached(m, d.inst.workload, d.fixed["lora_targets"], d.regimes[0].weights,
                              tp, pp, ep, rank, first)


# --- serving -------------------------------------------------------------------------------------------

def _serving_tables(d: Domains, t: Tables) -> None:
    """memory.serving_memory: weights = linear x format + 16-bit rest; KV cache; prefill/decode buffers."""
    m, inst = d.inst.model, d.inst

    def table(fn):
        return np.array([_kiparams(fn(_gpu_params(m, d, tp, pp, 1, 16, True))) for tp, pp in d.mp_options],
                        dtype=np.int64)

    t.serve_lin = ParamClass("served_linear", 4, table(lambda gp: gp.dense_linear)[None], table(lambda gp: gp.expert))
    t.serve_b16 = table(lambda gp: gp.embed + gp.small)
    t.serve_fmt = np.array([_scaled(mem.frozen_weight_bytes(_probe(d, r=r))) for r in d.regimes], dtype=np.int64)
    t.serve_kv_token = np.array([[math.ceil(_kv_per_token(m, tp, pp, kv)) for kv in d.kv_cache]
                                 for tp, pp in d.mp_options], dtype=np.int64)
    t.serve_concurrency = np.array([d.concurrency(Layout(1, 1, dp, 1)) for dp in d.dp_options], dtype=np.int64)
    t.serve_act = np.array([_serving_activations(m, inst.context, int(c)) for c in t.serve_concurrency],
                           dtype=np.int64).T


@lru_cache(maxsize=4096)
def _kv_per_token(m: ModelArch, tp: int, pp: int, kv: str) -> float:
    return mem.kv_bytes_per_token(m, Strategy(workload="serve", num_gpus=tp * pp, tp=tp, pp=pp, kv_cache=kv))


@lru_cache(maxsize=4096)
def _serving_activations(m: ModelArch, context: int, concurrency: int) -> tuple[int, int]:
    """Prefill and decode buffers in bytes at tp = 1 (they scale as 1/tp), read back from
    memory.serving_memory's phase totals: total - weights - KV cache, +1 byte for its int()."""
    s = Strategy(workload="serve", concurrency=concurrency, context=context)
    from catalog import default_catalog
    b = mem.serving_memory(m, next(iter(default_catalog().gpus.values())), s)
    gp = mem.gpu_params(m, s)
    weights = (gp.dense_linear + gp.expert) * mem.frozen_weight_bytes(s) + (gp.embed + gp.small) * 2
    kv = mem.kv_bytes_per_token(m, s) * concurrency * context
    return tuple(max(math.ceil(b.phases[p] - weights - kv) + 1, 0) for p in ("prefill", "decode"))

"""Time tables for the planner: planner/speed.py's training step and serving TPOT, factored.

Training (speed.training_throughput, on the busiest GPU = last pipeline stage):
  compute per micro-batch  C = layers(pp) x per-layer compute(tp, ep, mb, precision, ckpt, rank)
                               + head(tp, mb, precision, loss) + weight preparation(tp, pp, ep, regime, ckpt)
  communication per mb     X = layers(pp) x per-layer TP/EP traffic(tp, ep, mb, precision, ckpt)
                               + pipeline send(mb, precision) x link(pp, tp*dp)
  data parallel            volume(regime, ZeRO-3 or not) x ring factor(tp, dp[, ep]) + latencies
  step = ga x (C + X + exposed ZeRO-3 traffic) + (pp - 1) x (C + X) + exposed DP traffic
         + optimizer(params x bytes(regime)) + offload(params x PCIe and CPU Adam)
Serving (speed.decode_step_seconds): TPOT = max(host, fixed + GEMMs(tp, ep, format, batch) + attention
  + element-wise + TP(tp, batch) + KV read(tp, pp, KV format) x batch).
Both end in GPU-seconds per token: step x tp x pp / (micro_batch x grad_accum x seq_len), or
TPOT x tp x pp / concurrency, which gives throughput (GPUs / it), job time and job cost linearly.

Units (rounded up, like memory): step terms in TIME_UNIT (10 us); per-KiB and per-KiParam rates
in fixed point x FIX; seconds per token per replica in ns; GPU-seconds per token in 10 ns.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from planner import flops
from planner import speed
from planner.activations import dtypes
from planner.domains import Domains, Layout
from planner.solve_tables import KIB, PARAM_UNIT, Tables, _gpu_params, ceil_div
from planner.strategy import Strategy

TIME_UNIT = 1e-5        # seconds
TOKEN_UNIT = 1e-9       # seconds per token per replica
GAMMA_UNIT = 1e-8       # GPU-seconds per token
FIX = 2 ** 24           # fixed point of rates (time units per KiB / per KiParam); coefficients only
FINE = 100              # per-layer times in TIME_UNIT / FINE: multiplied by the layers, they must be finer
TIME_MAX = 2 ** 31 - 1  # a step, a TPOT: up to ~6 h; GPU time per token: up to ~21 s (slower is not a plan)


def units(seconds: float) -> int:
    return math.ceil(seconds / TIME_UNIT - 1e-9)


def fine_units(seconds: float) -> int:
    return math.ceil(seconds / TIME_UNIT * FINE - 1e-9)


def rate(seconds: float) -> int:
    """A rate (seconds per KiB or per KiParam) in TIME_UNIT x FIX, rounded up."""
    return math.ceil(seconds / TIME_UNIT * FIX - 1e-9)


@dataclass
class TrainingTime:
    """One GPU type. Indices: tp, ep, dp, mp (tp, pp pairs), mb, p (precision), c (checkpointing),
    k (rank), f (loss), r (regime) options of the Domains."""

    layer_compute: np.ndarray     # (tp, ep, mb, p, c, k) per decoder layer, TIME_UNIT / FINE
    layer_comm: np.ndarray        # (tp, ep, mb, p, c) TP and EP collectives per decoder layer, TIME_UNIT / FINE
    head: np.ndarray              # (tp, mb, p, f) lm_head GEMM and logits/loss element-wise work
    weight_prep: np.ndarray       # (mp, ep, r, c) dequantisation / autocast casts per micro-batch
    pp_send_kib: np.ndarray       # (mb, p) KiB a stage sends per micro-batch (activations of the boundary)
    pp_rate: np.ndarray           # (mp, dp) time per KiB x FIX (send forward + gradient back); 0 if pp = 1
    pp_latency: int               # two point-to-point latencies
    dp_rate: np.ndarray           # (tp, dp) ring time per KiB x FIX over dp ((n-1)/n / bandwidth)
    dp_expert_rate: np.ndarray    # (tp, dp, ep) the same over dp / ep (expert gradients)
    latency: int                  # one collective call
    optimizer_rate: np.ndarray    # (r,) GPU optimizer step per trained KiParam x FIX (0 with offload)
    offload_rate: np.ndarray      # (GPUs sharing a node's CPU: 1..,) PCIe + CPU Adam per KiParam x FIX
    node: int                     # GPUs per node (CPU Adam is shared by a node's GPUs)


@dataclass
class ServingTime:
    """One GPU type: TPOT of one decode step of `concurrency(dp)` sequences, in TIME_UNIT / FINE
    (a decode step of a small model takes well under a millisecond)."""

    host: np.ndarray              # (r,) host (launch) time of a forward, overlapped with the GPU
    body: np.ndarray              # (tp, ep, r, dp) fixed GPU time + GEMMs + attention + element-wise + TP
    kv_rate: np.ndarray           # (mp, kv) KV-cache read time per token of context x FIX
    kv_tokens: np.ndarray         # (dp,) cached tokens read per step: concurrency x context


@dataclass
class TimeTables:
    training: list[TrainingTime]   # by GPU type (empty when serving)
    serving: list[ServingTime]     # by GPU type (empty when training)
    overlap: Fraction              # calibration: share of compute that hides DP traffic
    seq_len: int


def build_time_tables(t: Tables) -> TimeTables:
    d = t.domains
    cal = speed.calibration()
    overlap = Fraction(str(cal.overlap))
    if d.inst.is_training:
        return TimeTables([_training_time(d, t, a.gpu, cal) for a in d.gpus], [], overlap, d.inst.seq_len)
    return TimeTables([], [_serving_time(d, t, a.gpu, cal) for a in d.gpus], overlap, d.inst.seq_len)


def _probe(d: Domains, lay: Layout, r=None, **fields) -> Strategy:
    r = r or d.regimes[0]
    return d.strategy(lay, r, **fields).model_copy(update={"grad_accum": 1})


# --- training ------------------------------------------------------------------------------------------

def _training_time(d: Domains, t: Tables, gpu, cal) -> TrainingTime:
    m = d.inst.model
    P = [next(r for r in d.regimes if r.precision == p) for p in t.precisions]
    f_moe = speed.moe_fraction(m)
    shape = (len(d.tp_options), len(d.ep_options), len(d.micro_batch), len(P), len(d.checkpointing),
             len(d.lora_rank))
    layer_compute = np.zeros(shape, dtype=np.int64)
    layer_comm = np.zeros(shape[:5], dtype=np.int64)
    for (ti, tp), (ei, ep), (mi, mb), (pi, r), (ci, ckpt), (ki, rank) in _product(
            d.tp_options, d.ep_options, d.micro_batch, P, d.checkpointing, d.lora_rank):
        s = _probe(d, Layout(tp, 1, ep, ep), r, checkpointing=ckpt, micro_batch=mb, lora_rank=rank)
        tokens = mb * s.seq_len
        rec = flops.recompute_passes(s)
        # speed.microbatch_seconds, one decoder layer: GEMMs, attention, element-wise
        gemm = (1 - f_moe) * speed.layer_gemm_seconds(m, gpu, s, tokens, False, cal)
        if f_moe:
            gemm += f_moe * speed.layer_gemm_seconds(m, gpu, s, tokens, True, cal)
        attn = tokens * flops.attention_hardware_flops_per_token(m, s) / m.num_hidden_layers / s.tp / (
            speed.peak_flops(gpu, "bf16") * speed.attention_efficiency(m, gpu, cal))
        redo = rec + (speed.selective_share(m) if s.checkpointing == "selective" else 0.0)
        el = (1 - f_moe) * speed.elementwise_elements(m, s, False) + f_moe * speed.elementwise_elements(m, s, True)
        elementwise = cal.elementwise_traffic * 2 * dtypes(s).act * tokens * el * (3 + redo) / speed.hbm(gpu)
        layer_compute[ti, ei, mi, pi, ci, ki] = fine_units(gemm + attn + elementwise)
        if ki == 0:
            layer_comm[ti, ei, mi, pi, ci] = fine_units(speed.tp_comm_seconds(m, gpu, s, tokens, 1, cal)
                                                        + speed.ep_comm_seconds(m, gpu, s, tokens, 1, cal))
    head = np.zeros((len(d.tp_options), len(d.micro_batch), len(P), len(d.loss)), dtype=np.int64)
    for (ti, tp), (mi, mb), (pi, r), (fi, loss) in _product(d.tp_options, d.micro_batch, P, d.loss):
        s = _probe(d, Layout(tp, 1, 1, 1), r, loss=loss, micro_batch=mb)
        tokens = mb * s.seq_len
        a_el, w_el, regime = speed.gemm_elements(s)
        passes = 2 if s.is_peft else 3
        gemm = passes * speed.gemm_seconds(gpu, tokens, m.hidden_size, m.vocab_size / tp,
                                           speed.peak_flops(gpu, regime), a_el, w_el, cal)
        elementwise = cal.elementwise_traffic * 2 * dtypes(s).act * tokens * 3 * speed.head_elements(m, s) \
            / speed.hbm(gpu)
        head[ti, mi, pi, fi] = units(gemm + elementwise)
    weight_prep = _weight_prep(d, gpu)
    # pipeline: speed.pp_comm_seconds = 2 x (tokens*h*bytes / link + latency)
    pp_send = np.array([[ceil_div(mb * d.inst.seq_len * m.hidden_size * dtypes(_probe(d, Layout(1, 1, 1, 1), r)).act,
                                  KIB) for r in P] for mb in d.micro_batch], dtype=np.int64)
    pp_rate = np.array([[rate(2 * KIB / speed.link_bandwidth(gpu, pp, tp * dp, cal)) if pp > 1 else 0
                         for dp in d.dp_options] for tp, pp in d.mp_options], dtype=np.int64)
    # data parallel: speed.ring_seconds factor (n-1)/n per byte, over dp (dense) or dp/ep (experts)
    dp_rate = np.array([[rate((dp - 1) / dp * KIB / speed.link_bandwidth(gpu, dp, tp, cal))
                         for dp in d.dp_options] for tp in d.tp_options], dtype=np.int64)
    dp_expert_rate = np.array([[[rate((dp // ep - 1) / (dp // ep) * KIB / speed.link_bandwidth(gpu, dp, tp, cal))
                                 if dp % ep == 0 else 0 for ep in d.ep_options] for dp in d.dp_options]
                               for tp in d.tp_options], dtype=np.int64)
    hbm = speed.hbm(gpu)
    optimizer_rate = np.array([0 if r.offload else rate(speed.optimizer_bytes_per_param(_probe(d, Layout(1, 1, 1, 1), r))
                                                        * PARAM_UNIT / hbm) for r in d.regimes], dtype=np.int64)
    node = gpu.gpus_per_node
    widest = max(a.gpu.gpus_per_node for a in d.gpus)   # same shape for every GPU type (padded)
    offload_rate = np.array([rate(PARAM_UNIT * speed.offload_seconds_per_param(gpu, min(k, node), cal))
                             for k in range(1, widest + 1)], dtype=np.int64)
    return TrainingTime(layer_compute, layer_comm, head, weight_prep, pp_send, pp_rate,
                        units(2 * cal.collective_latency_s), dp_rate, dp_expert_rate, units(cal.collective_latency_s),
                        optimizer_rate, offload_rate, node)


def _weight_prep(d: Domains, gpu) -> np.ndarray:
    """speed.weight_prep_seconds is (matmul weights on the last stage's GPU) x (bytes per use x uses /
    HBM bandwidth): QLoRA dequantises its quantised linear weights, amp casts every weight. The rate
    per parameter comes from one speed call per (regime, checkpointing); the parameter counts from
    the layout (memory.gpu_params, cached)."""
    m = d.inst.model
    out = np.zeros((len(d.mp_options), len(d.ep_options), len(d.regimes), len(d.checkpointing)), dtype=np.int64)
    probe = Layout(1, 1, 1, 1)
    gp1 = _gpu_params(m, d, 1, 1, 1, d.lora_rank[0], False)
    for (ri, r), (ci, ckpt) in _product(d.regimes, d.checkpointing):
        seconds = speed.weight_prep_seconds(m, gpu, _probe(d, probe, r, checkpointing=ckpt))
        if not seconds:
            continue
        quantized = d.inst.workload == "qlora" and r.weights != "bf16"
        per_param = seconds / ((gp1.dense_linear + gp1.expert) if quantized else gp1.base)
        for (mi, (tp, pp)), (ei, ep) in _product(d.mp_options, d.ep_options):
            gp = _gpu_params(m, d, tp, pp, ep, d.lora_rank[0], False)
            out[mi, ei, ri, ci] = units(per_param * ((gp.dense_linear + gp.expert) if quantized else gp.base))
    return out


def _product(*axes):
    """(index, value) tuples of the Cartesian product of a few small option lists."""
    return itertools.product(*[list(enumerate(a)) for a in axes])


def dp_volume_coefficients(d: Domains, t: Tables) -> dict[str, np.ndarray]:
    """Bytes per parameter that data parallelism moves, by regime, for the parameter classes of the
    last stage (speed.dp_comm): 'step' (ZeRO 0-2: the gradient all-reduce, ring factor 2) and 'micro'
    (ZeRO-3: two weight gathers and a gradient reduce-scatter per micro-batch, factor 1 each).
    Columns follow t.stages[1].classes; the expert part of each class travels over dp / ep."""
    names = [c.name for c in t.stages[1].classes]
    out = {k: np.zeros((len(d.regimes), len(names)), dtype=object) for k in ("step", "micro")}
    peft = d.inst.is_peft
    for ri, r in enumerate(d.regimes):
        s = _probe(d, Layout(1, 1, 1, 1), r)
        el = 4 if s.precision in ("fp32", "amp") else 2
        if peft:
            fw = speed.frozen_weight_bytes(s)
            out["step"][ri, names.index("lora@1")] = 2 * el
            out["micro"][ri, names.index("lora@1")] = el
            out["micro"][ri, names.index("frozen_linear")] = 2 * fw
            out["micro"][ri, names.index("frozen_16bit")] = 2 * 2
        else:
            out["step"][ri, names.index("trained@1")] = 2 * el
            out["micro"][ri, names.index("trained@1")] = 3 * el
    return {k: v.astype(np.float64) for k, v in out.items()}


# --- serving ---------------------------------------------------------------------------------------------

def _serving_time(d: Domains, t: Tables, gpu, cal) -> ServingTime:
    m, ctx = d.inst.model, d.inst.context
    L = m.num_hidden_layers
    f_moe = speed.moe_fraction(m)
    engine = cal.engines["vllm"]
    conc = [int(c) for c in t.serve_concurrency]
    host = np.array([fine_units(L * engine.host_seconds_per_layer[r.weights]) for r in d.regimes], dtype=np.int64)
    body = np.zeros((len(d.tp_options), len(d.ep_options), len(d.regimes), len(d.dp_options)), dtype=np.int64)
    for (ti, tp), (ei, ep), (ri, r), (di, dp) in _product(d.tp_options, d.ep_options, d.regimes, d.dp_options):
        s = _probe(d, Layout(tp, 1, ep, ep), r)
        batch = conc[di]
        experts = None
        if m.is_moe:   # speed.decode_step_seconds: the experts batch*k routings touch
            E, k = m.num_experts, m.num_experts_per_tok
            touched = E * (1 - (1 - k / E) ** batch)
            experts = (touched / ep, batch * k / touched)
        a_el, w_el, regime = speed.serve_elements(s, gpu)
        peak = speed.peak_flops(gpu, regime)

        def layer(moe: bool) -> float:
            return sum(c * speed.gemm_seconds(gpu, M, K, N, peak, a_el, w_el, cal)
                       for M, K, N, c, _ in speed.layer_gemms(m, s, batch, moe, experts))

        gemm = L * ((1 - f_moe) * layer(False) + (f_moe * layer(True) if f_moe else 0.0))
        gemm += speed.gemm_seconds(gpu, batch, m.hidden_size, m.vocab_size / tp, peak, a_el, 2, cal)
        attention = batch * flops.attention_flops_per_token(m, ctx, False) / tp / (
            speed.peak_flops(gpu, "bf16") * speed.attention_efficiency(m, gpu, cal))
        el = (1 - f_moe) * speed.elementwise_elements(m, s, False) + f_moe * speed.elementwise_elements(m, s, True)
        elementwise = cal.elementwise_traffic * 2 * 2 * batch * L * el / speed.hbm(gpu)
        tp_comm = L * 2 * speed.ring_seconds(batch * m.hidden_size * 2, tp, 2,
                                             speed.link_bandwidth(gpu, tp, 1, cal), cal)
        fixed = L * engine.gpu_seconds_per_layer[r.weights]
        body[ti, ei, ri, di] = fine_units(fixed + gemm + attention + elementwise + tp_comm)
    kv_rate = np.zeros((len(d.mp_options), len(d.kv_cache)), dtype=np.int64)
    for (mi, (tp, pp)), (ki, kv) in _product(d.mp_options, d.kv_cache):
        s = Strategy(workload="serve", num_gpus=tp * pp, tp=tp, pp=pp, kv_cache=kv)
        per_token = cal.gemm_traffic * engine.kv_traffic * speed.kv_bytes_per_token(m, s) * pp / speed.hbm(gpu)
        kv_rate[mi, ki] = rate(per_token * FINE)
    return ServingTime(host, body, kv_rate, np.array([c * ctx for c in conc], dtype=np.int64))


# --- the CP-SAT side ----------------------------------------------------------------------------------------

class TimeModel:
    """Adds GPU-seconds per token (`gamma`, GAMMA_UNIT) to a PlanSolver, from the time tables."""

    def __init__(self, solver, tt: TimeTables):
        self.s = solver
        self.tt = tt
        self.gamma = solver._int("gpu_time_per_token", TIME_MAX)
        self._node_lits: dict[int, dict] = {}
        if tt.training:
            self._training()
        else:
            self._serving()

    def _int(self, name, ub=TIME_MAX):
        return self.s._int(name, min(int(ub), TIME_MAX))

    def _gpu_cases(self):
        return list(zip(self.s.x.gpu, range(len(self.s.domains.gpus))))

    def _training(self) -> None:
        """Each table term as a variable bounded below under the literals of its key (and the GPU
        type), then combined by _combine as speed.training_throughput does."""
        s, d, t, m, x = self.s, self.s.domains, self.s.tables, self.s.model, self.s.x
        P = [s.precision[p] for p in t.precisions]
        layer_c, layer_x, head, prep, pp_c = (self._int(n) for n in ("t_layer_compute", "t_layer_comm", "t_head",
                                                                      "t_weight_prep", "t_pp"))
        dp_step, dp_micro = self._int("t_dp_step"), self._int("t_dp_micro")
        optimizer, offload = self._int("t_optimizer"), self._int("t_offload")
        q1 = self._last_stage_trainable()
        vol = self._dp_volumes()
        for g, gi in self._gpu_cases():
            tg = self.tt.training[gi]
            for (ti, tp), (ei, e), (mi, mb), (pi, p), (ci, c), (ki, k) in _product(
                    d.tp_options, x.ep, x.micro_batch, P, x.checkpointing, x.lora_rank):
                lits = [g, s.tp[tp], e, mb, p, c, k]
                m.add(layer_c >= int(tg.layer_compute[ti, ei, mi, pi, ci, ki])).only_enforce_if(lits)
                if ki == 0:
                    m.add(layer_x >= int(tg.layer_comm[ti, ei, mi, pi, ci])).only_enforce_if(lits[:-1])
            for (ti, tp), (mi, mb), (pi, p), (fi, f) in _product(d.tp_options, x.micro_batch, P, x.loss):
                m.add(head >= int(tg.head[ti, mi, pi, fi])).only_enforce_if([g, s.tp[tp], mb, p, f])
            for (mi, mp), (ei, ep), (ri, r), (ci, c) in _product(x.mp, x.ep, x.regime, x.checkpointing):
                if tg.weight_prep[mi, ei, ri, ci]:
                    m.add(prep >= int(tg.weight_prep[mi, ei, ri, ci])).only_enforce_if([g, mp, ep, r, c])
            # pipeline sends: KiB (mb, precision) x link rate (tp, pp, dp)
            send = self._int("pp_send_kib", tg.pp_send_kib.max())
            for (mi, mb), (pi, p) in _product(x.micro_batch, P):
                m.add(send >= int(tg.pp_send_kib[mi, pi])).only_enforce_if([g, mb, p])
            for (mi, mp), (di, y) in _product(x.mp, x.dp):
                if tg.pp_rate[mi, di]:
                    m.add(pp_c * FIX >= int(tg.pp_rate[mi, di]) * send + tg.pp_latency * FIX).only_enforce_if(
                        [g, mp, y])
            # data parallel: volume (KiB) x ring rate, plus one latency per call and group
            for (ti, tp), (di, y) in _product(d.tp_options, x.dp):
                if d.dp_options[di] == 1:
                    continue
                zero3 = s.zero_at_least[3]
                for name, var, calls, mode in (("step", dp_step, 1, ~zero3), ("micro", dp_micro, 3, zero3)):
                    for (ei, e) in enumerate(x.ep):
                        dpe = d.dp_options[di] // d.ep_options[ei]
                        if d.dp_options[di] % d.ep_options[ei]:
                            continue
                        lat = calls * (tg.latency + (tg.latency if dpe > 1 else 0))
                        m.add(var * FIX >= int(tg.dp_rate[ti, di]) * vol[name]["dense"]
                              + int(tg.dp_expert_rate[ti, di, ei]) * vol[name]["experts"] + lat * FIX
                              ).only_enforce_if([g, s.tp[tp], y, e, mode])
            for (ri, r) in enumerate(x.regime):
                if tg.optimizer_rate[ri]:
                    m.add(optimizer * FIX >= int(tg.optimizer_rate[ri]) * q1).only_enforce_if([g, r])
            offload_lits = [r for r, reg in zip(x.regime, d.regimes) if reg.offload]
            if offload_lits:
                for k, lit in self._per_node(tg.node).items():
                    for r in offload_lits:
                        m.add(offload * FIX >= int(tg.offload_rate[k - 1]) * q1).only_enforce_if([g, r, lit])
        self._combine(layer_c, layer_x, head, prep, pp_c, dp_step, dp_micro, optimizer, offload)

    def _last_stage_trainable(self):
        """Trained parameters this GPU updates (speed.trainable_on_gpu): the ZeRO>=1 class of the
        last stage, KiParams."""
        s = self.s
        st = s.tables.stages[1]
        c = next(c for c in st.classes if c.threshold == 1)
        parts = s._param_class("last", c)
        v = s._int("trainable_last", s._ub[parts["unsharded"].index])
        sh = s.zero_at_least[1]
        s.model.add(v >= parts["unsharded"]).only_enforce_if(~sh)
        s.model.add(v >= parts["sharded"]).only_enforce_if(sh)
        return v

    def _dp_volumes(self) -> dict:
        """KiB moved per GPU per ring: dense part over dp, expert part over dp/ep (speed.dp_comm)."""
        s, d, t, m, x = self.s, self.s.domains, self.s.tables, self.s.model, self.s.x
        coef = dp_volume_coefficients(d, t)
        classes = t.stages[1].classes
        parts = [s._param_class("last", c) for c in classes]
        own = [p["own"] for p in parts]
        experts = [p.get("experts/ep") for p in parts]
        out = {}
        zero3 = s.zero_at_least[3]
        for name, enforce in (("step", ~zero3), ("micro", zero3)):
            dense = self._int(f"dp_{name}_dense_kib")
            exp = self._int(f"dp_{name}_experts_kib")
            for ri, r in enumerate(x.regime):
                cs = coef[name][ri]
                if not cs.any():
                    continue
                m.add(dense * PARAM_UNIT >= sum(math.ceil(c * PARAM_UNIT) * v for c, v in zip(cs, own) if c)
                      ).only_enforce_if([r, enforce])
                e_terms = [math.ceil(c * PARAM_UNIT) * v for c, v in zip(cs, experts) if c and v is not None]
                if e_terms:
                    m.add(exp * PARAM_UNIT >= sum(e_terms)).only_enforce_if([r, enforce])
            out[name] = {"dense": dense, "experts": exp}
        return out

    def _per_node(self, node: int) -> dict:
        """A literal for min(GPUs, GPUs per node) = k, k = 1..node (CPU Adam is shared by a node)."""
        s, m = self.s, self.s.model
        if node not in self._node_lits:
            lits = {k: m.new_bool_var(f"per_node={k}") for k in range(1, node + 1)}
            m.add_exactly_one(lits.values())
            for k, lit in lits.items():
                m.add(s.n == k).only_enforce_if(lit) if k < node else m.add(s.n >= node).only_enforce_if(lit)
            self._node_lits[node] = lits
        return self._node_lits[node]

    def _combine(self, layer_c, layer_x, head, prep, pp_c, dp_step, dp_micro, optimizer, offload) -> None:
        """speed.training_throughput's step from its parts, then GPU-seconds per token."""
        s, d, t, m, x = self.s, self.s.domains, self.s.tables, self.s.model, self.s.x
        layers = {p: int(t.stages[1].layers[next(i for i, (_, q) in enumerate(d.mp_options) if q == p)])
                  for p in s.pp}
        compute, comm = self._int("t_mb_compute"), self._int("t_mb_comm")
        for p, lit in s.pp.items():
            m.add(compute * FINE >= layers[p] * layer_c + FINE * (head + prep)).only_enforce_if(lit)
            m.add(comm * FINE >= layers[p] * layer_x + FINE * pp_c).only_enforce_if(lit)
        total = self._int("t_mb_total")
        m.add(total >= compute + comm)
        # exposed DP traffic: beyond overlap x the compute it hides behind (speed.exposed)
        o = self.tt.overlap
        e3 = self._int("t_zero3_exposed")
        m.add(e3 * o.denominator >= dp_micro * o.denominator - o.numerator * compute)
        e12 = self._int("t_dp_exposed")
        for c, lit in zip(d.checkpointing, x.checkpointing):
            rec = 1 if c == "full" else 0
            share = Fraction(2 + rec, 3 + rec) * o
            m.add(e12 * share.denominator >= dp_step * share.denominator - share.numerator * compute).only_enforce_if(lit)
        per_mb = self._int("t_mb_with_zero3")
        m.add(per_mb >= total + e3)
        accumulated = self._int("t_accumulated")
        for (mi, mb), (di, y) in _product(x.micro_batch, x.dp):
            m.add(accumulated >= int(t.grad_accum[mi, di]) * per_mb).only_enforce_if([mb, y])
        bubble = self._int("t_bubble")
        for p, lit in s.pp.items():
            if p > 1:
                m.add(bubble >= (p - 1) * total).only_enforce_if(lit)
        step = self._int("t_step")
        m.add(step >= accumulated + bubble + e12 + optimizer + offload)
        self.step = step
        tokens, lits = [], []
        for (mi, mb), (di, y) in _product(d.micro_batch, x.dp):
            lits.append([x.micro_batch[mi], y])
            tokens.append(mb * int(t.grad_accum[mi, di]) * d.inst.seq_len)
        self._per_token_pairs(step, tokens, lits)

    def _per_token_pairs(self, step, tokens, lits, fine: bool = False):
        s, m = self.s, self.s.model
        per_token = self._int("time_per_token_per_replica")
        ratio = round(TIME_UNIT / TOKEN_UNIT / (FINE if fine else 1))
        for lit, n in zip(lits, tokens):
            m.add(per_token * int(n) >= step * ratio).only_enforce_if(lit)
        for (tp, pp), lit in zip(s.domains.mp_options, s.x.mp):
            m.add(self.gamma * round(GAMMA_UNIT / TOKEN_UNIT) >= tp * pp * per_token).only_enforce_if(lit)

    def _serving(self) -> None:
        s, d, t, m, x = self.s, self.s.domains, self.s.tables, self.s.model, self.s.x
        tpot = self._int("t_tpot")
        body = self._int("t_decode_body")
        kv_rate = self._int("kv_rate")
        kv = self._int("t_kv_read")
        for g, gi in self._gpu_cases():
            st = self.tt.serving[gi]
            for ri, r in enumerate(x.regime):
                m.add(tpot >= int(st.host[ri])).only_enforce_if([g, r])
            for (ti, tp), (ei, e), (ri, r), (di, y) in _product(d.tp_options, x.ep, x.regime, x.dp):
                m.add(body >= int(st.body[ti, ei, ri, di])).only_enforce_if([g, s.tp[tp], e, r, y])
            for (mi, mp), (ki, k) in _product(x.mp, x.kv_cache):
                m.add(kv_rate >= int(st.kv_rate[mi, ki])).only_enforce_if([g, mp, k])
            for (di, y) in enumerate(x.dp):
                m.add(kv * FIX >= int(st.kv_tokens[di]) * kv_rate).only_enforce_if([g, y])
        m.add(tpot >= body + kv)
        self.step = tpot
        self._per_token_pairs(tpot, [int(c) for c in t.serve_concurrency], [[y] for y in x.dp], fine=True)

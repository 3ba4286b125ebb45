"""The exhaustive evaluator: every combination of every block's options, vectorised with numpy.

It is the test oracle of the CP-SAT planner (tests and benchmarks only): it reads the same
coefficient tables (planner/solve_tables.py, planner/solve_time.py) and applies the same integer
rounding, but combines them by direct evaluation of each combination (memory of every phase,
GPU time per token, prices, limits) instead of constraints, so a wrong encoding in
planner/solver.py shows up as a different optimum, tie-break or verdict on feasibility.
table_memory / table_time evaluate one Strategy, for the tests that hold the tables against
estimate_memory and estimate_throughput.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from planner.domains import Domains, Instance
from planner.solve_tables import COEF_SCALE, KEEP_SCALE, KIB, MIB, STATE_DEN, STATE_TERMS, Tables, build_tables, ceil_div

BLOCKS = ("gpu", "layout", "zero", "regime", "checkpointing", "loss", "micro_batch", "lora_rank", "kv_cache")


@dataclass
class Best:
    feasible: bool
    objective: Optional[float]           # primary objective, as PlanSolver reports it
    gpus: Optional[int]
    gamma: Optional[int]                 # GPU time per token (solve_time.GAMMA_UNIT) of the tie-break
    index: Optional[dict]                # option index per block
    evaluated: int                       # combinations evaluated
    seconds: float


def _sizes(d: Domains) -> dict[str, int]:
    return {"gpu": len(d.gpus), "layout": len(d.layouts), "zero": len(d.zero), "regime": len(d.regimes),
            "checkpointing": len(d.checkpointing), "loss": len(d.loss), "micro_batch": len(d.micro_batch),
            "lora_rank": len(d.lora_rank), "kv_cache": len(d.kv_cache)}


def evaluate(t: Tables, ix: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(valid and fitting, allocated MiB per phase) for broadcastable option-index arrays."""
    d = t.domains
    lay = ix["layout"]
    g = ix["gpu"]
    L = _layout_columns(d)
    cols = {k: v[lay] for k, v in L.items()}
    n = cols["tp"] * cols["pp"] * cols["dp"]
    node = np.array([a.gpu.gpus_per_node for a in d.gpus])[g]
    cap_count = np.array([a.cap for a in d.gpus])[g]
    ok = (cols["tp"] <= node) & (n <= cap_count) & ((n <= node) | (n % node == 0))
    regime_ok = np.array([[d.regime_fits_gpu(r, a.gpu) for r in d.regimes] for a in d.gpus])
    ok = ok & regime_ok[g, ix["regime"]]
    fixed = t.fixed_mib(cols["tp"], cols["pp"], cols["dp"], cols["ep"])
    cap = t.cap_mib[g]
    phases: dict[str, np.ndarray] = {}
    if d.inst.is_training:
        ok, fits = _training(t, ix, cols, ok, fixed, cap, phases)
    else:
        fits = _serving(t, ix, cols, fixed, cap, phases)
    return ok & fits, phases


def _layout_columns(d: Domains) -> dict[str, np.ndarray]:
    """Per valid layout: its degrees and the index of its option in each factored block."""
    return {
        "tp": np.array([v.tp for v in d.layouts]), "pp": np.array([v.pp for v in d.layouts]),
        "dp": np.array([v.dp for v in d.layouts]), "ep": np.array([v.ep for v in d.layouts]),
        "mp_i": np.array([d.mp_options.index((v.tp, v.pp)) for v in d.layouts]),
        "tp_i": np.array([d.tp_options.index(v.tp) for v in d.layouts]),
        "dp_i": np.array([d.dp_options.index(v.dp) for v in d.layouts]),
        "ep_i": np.array([d.ep_options.index(v.ep) for v in d.layouts]),
    }


def _fit(t: Tables, alloc, fixed, cap):
    den, num = t.frag.denominator, t.frag.numerator
    return (den + num) * alloc + den * fixed <= den * cap


def _training(t: Tables, ix, cols, ok, fixed, cap, phases):
    d = t.domains
    inst = d.inst
    tp, pp, dp, ep = cols["tp"], cols["pp"], cols["dp"], cols["ep"]
    z, r = np.array(d.zero)[ix["zero"]], ix["regime"]
    mb = np.array(d.micro_batch)[ix["micro_batch"]]
    k = ix["lora_rank"]
    ga = t.grad_accum[ix["micro_batch"], cols["dp_i"]]
    if "grad_accum" not in inst.pins:
        ok = ok & (mb * dp <= inst.global_batch)
    offload = np.array([x.offload for x in d.regimes])[r]
    ok = ok & ~(offload & (z < 1))
    persist = (t.persist[r] == 1) | (pp > 1) | (ga > 1)
    p = t.regime_precision[r]
    c, f = ix["checkpointing"], ix["loss"]

    def per_gpu(per_seq):      # KiB on one GPU: bytes per sequence x micro_batch / tp
        return ceil_div(mb * per_seq, tp * KIB)

    stored = per_gpu(t.act_stored[p, c, k])
    layer = per_gpu(t.act_layer[p, k])
    merged = ceil_div(t.act_merge[p], tp * ep * KIB)
    ckpt = np.array(d.checkpointing)[c]
    kept = stored + np.where(ckpt == "full", 0, merged)
    last_layer = layer + merged
    recompute = np.where(ckpt != "none", last_layer, 0)
    hg = ceil_div(t.head_grad[p, cols["tp_i"]], KIB)
    lb = per_gpu(t.act_loss_bwd[p, f])
    fused = np.array(d.loss)[f] == "fused"
    kd, ks, kt = (t.head_grad_k[p, i] for i in range(3))
    lb = np.where(fused, np.maximum(lb + kd * hg, ks * hg), lb)
    head_fwd = per_gpu(t.act_head[p]) + per_gpu(t.act_loss_fwd[p, f])
    head_bwd = per_gpu(t.act_head[p]) + lb
    tied = kt * hg if inst.model.tie_word_embeddings else 0 * hg
    gather = np.where((z >= 3) & (dp > 1), t.gather[cols["tp_i"], cols["ep_i"]], 0)
    fits = np.ones(np.broadcast(ok, stored, z, hg).shape, dtype=bool)
    for si, st in enumerate(t.stages):
        if si == 1 and not (pp > 1).any():
            continue
        q_values = []
        for cl in st.classes:
            rank = k if cl.own.shape[0] > 1 else 0
            q_values.append(np.where(z >= cl.threshold, cl.sharded(rank, cols["mp_i"], dp),
                                     cl.unsharded(rank, cols["mp_i"], ep)))
        q_values.append(gather)
        terms = {term: ceil_div(sum(st.coef[term][r, qi] * qv for qi, qv in enumerate(q_values)), STATE_DEN)
                 for term in STATE_TERMS}
        W, G, O, T = (terms[x] for x in STATE_TERMS)
        g_live = np.where(persist, G, 0)
        g_last = ceil_div(G * st.keep_last[k, cols["mp_i"], cols["ep_i"]], KEEP_SCALE)
        cache = ceil_div(t.cache_coef[p] * st.cache.unsharded(0, cols["mp_i"], ep), STATE_DEN)
        layers = st.layers[cols["mp_i"]]
        if si == 0:
            stack = layers * np.minimum(pp, ga) * kept
            has_head = pp == 1
        else:
            stack = layers * kept
            has_head = np.ones_like(pp, dtype=bool)
        hf, hb = np.where(has_head, head_fwd, 0), np.where(has_head, head_bwd, 0)
        extra = np.where(has_head & (si == 0), tied, 0)
        alloc = {
            "forward": W + g_live + O + ceil_div(stack + hf, KIB) + cache,
            "backward": W + g_live + O + ceil_div(stack + hb, KIB) + cache,
            "backward_recompute": W + g_live + O + ceil_div(stack + recompute, KIB),
            "backward_last_layer": W + np.maximum(g_last, g_live) + O + ceil_div(last_layer, KIB),
            "backward_end": W + G + O + ceil_div(extra, KIB),
            "optimizer": W + G + O + T,
        }
        label = "first" if si == 0 else "last"
        for phase, a in alloc.items():
            stage_fits = _fit(t, a, fixed, cap)
            if si == 1:
                stage_fits = stage_fits | (pp == 1)
            fits = fits & stage_fits
            phases[f"{label}:{phase}"] = a
    return ok, fits


def _serving(t: Tables, ix, cols, fixed, cap, phases):
    r, kv = ix["regime"], ix["kv_cache"]
    lin = t.serve_lin.unsharded(0, cols["mp_i"], cols["ep"])
    w = ceil_div(t.serve_fmt[r] * lin + 2 * COEF_SCALE * t.serve_b16[cols["mp_i"]], STATE_DEN)
    per_seq = t.serve_concurrency[cols["dp_i"]] * t.domains.inst.context
    kv_mib = ceil_div(t.serve_kv_token[cols["mp_i"], kv] * per_seq, MIB)
    fits = True
    for i, phase in enumerate(("prefill", "decode")):
        a = w + kv_mib + ceil_div(ceil_div(t.serve_act[i, cols["dp_i"]], cols["tp"]), MIB)
        phases[f"serve:{phase}"] = a
        fits = fits & _fit(t, a, fixed, cap)
    return fits


def primary(t: Tables, objective: str, g: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The primary objective in the integer units of PlanSolver (milli-USD/h, USD, GPUs)."""
    d = t.domains
    if objective == "hourly":
        price = np.array([-(-round(a.gpu.price_hourly.usd * 1e6) // 1000) for a in d.gpus])
    elif objective == "capex":
        price = np.array([int(-(-a.gpu.price_purchase.usd // 1)) for a in d.gpus])
    elif objective == "gpus":
        price = np.ones(len(d.gpus), dtype=np.int64)
    else:
        raise NotImplementedError(f"exhaustive evaluator: objective {objective}")
    return price[g] * n


def _job_cents(t: Tables, inst: Instance, g: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """PlanSolver.job_cents: price per GPU-hour x GPU time per token x tokens, in cents, rounded up."""
    from fractions import Fraction

    from planner.solve_time import GAMMA_UNIT
    num, den = [], []
    for a in t.domains.gpus:
        f = Fraction(a.gpu.price_hourly.usd * 100 * inst.tokens * GAMMA_UNIT / 3600).limit_denominator(2 ** 20)
        num.append(math.ceil(f * f.denominator))
        den.append(f.denominator)
    return ceil_div(np.array(num)[g] * gamma, np.array(den)[g])


def _within_limits(t: Tables, inst: Instance, g, n, gamma) -> np.ndarray:
    """The caps, in PlanSolver's integer units (PlanSolver._limit)."""
    from planner.solve_time import GAMMA_UNIT
    lim = inst.limits
    ok = np.ones(np.broadcast(g, n, gamma).shape, dtype=bool)
    if lim.max_hourly_usd is not None:
        ok &= primary(t, "hourly", g, n) <= int(lim.max_hourly_usd * 1000)
    if lim.max_capex_usd is not None:
        ok &= primary(t, "capex", g, n) <= int(lim.max_capex_usd)
    if lim.min_throughput is not None:
        ok &= n * round(1 / GAMMA_UNIT) >= math.ceil(lim.min_throughput) * gamma
    if lim.deadline_hours is not None:
        ok &= math.ceil(inst.tokens * GAMMA_UNIT * 1000) * gamma <= int(lim.deadline_hours * 3600 * 1000) * n
    if lim.budget_usd is not None:
        ok &= _job_cents(t, inst, g, gamma) <= int(lim.budget_usd * 100)
    return ok


def solve_exhaustive(inst: Instance, chunk: int = 1_000_000) -> Best:
    """Minimum of (primary objective, GPUs), then GPU time per token, over every combination."""
    from planner.solve_time import build_time_tables

    start = time.perf_counter()
    d = Domains(inst)
    if d.empty:
        return Best(False, None, None, None, None, 0, time.perf_counter() - start)
    t = build_tables(d)
    tt = build_time_tables(t)
    timed = inst.objective == "job" or any(getattr(inst.limits, f) is not None
                                           for f in ("min_throughput", "deadline_hours", "budget_usd"))
    sizes = _sizes(d)
    others = int(np.prod([v for k, v in sizes.items() if k != "layout"]))
    step = max(1, chunk // others)
    scale = {"hourly": 1000, "job": 100}.get(inst.objective, 1)
    columns = _layout_columns(d)
    best_key, best_gamma, best_ix, evaluated = None, None, None, 0
    for lo in range(0, sizes["layout"], step):
        hi = min(lo + step, sizes["layout"])
        shape = [sizes[b] if b != "layout" else hi - lo for b in BLOCKS]
        grids = np.ix_(*[np.arange(s) for s in shape])
        ix = {b: grid for b, grid in zip(BLOCKS, grids)}
        ix["layout"] = ix["layout"] + lo
        cols = {k: v[ix["layout"]] for k, v in columns.items()}
        n = cols["tp"] * cols["pp"] * cols["dp"]
        fits, _ = evaluate(t, ix)
        gamma, time_ok = gpu_time_per_token(t, tt, ix, cols)
        feasible = fits & _within_limits(t, inst, ix["gpu"], n, gamma)
        if timed:
            feasible &= time_ok
        feasible = np.broadcast_to(feasible, shape)
        evaluated += feasible.size
        if not feasible.any():
            continue
        prim = _job_cents(t, inst, ix["gpu"], gamma) if inst.objective == "job" else \
            primary(t, inst.objective, ix["gpu"], n)
        key = np.where(feasible, np.broadcast_to(prim, shape) * (2 ** 20) + np.broadcast_to(n, shape),
                       np.iinfo(np.int64).max)
        chunk_key = int(key.min())
        tie_gamma = np.where((key == chunk_key) & np.broadcast_to(time_ok, shape),
                             np.broadcast_to(gamma, shape), np.iinfo(np.int64).max)
        flat = int(np.argmin(tie_gamma)) if tie_gamma.min() < np.iinfo(np.int64).max else int(np.argmin(key))
        chunk_gamma = int(tie_gamma.flat[flat])
        if best_key is None or chunk_key < best_key or (chunk_key == best_key and chunk_gamma < best_gamma):
            best_key, best_gamma = chunk_key, chunk_gamma
            pos = np.unravel_index(flat, shape)
            best_ix = {b: int(p) + (lo if b == "layout" else 0) for b, p in zip(BLOCKS, pos)}
    seconds = time.perf_counter() - start
    if best_key is None:
        return Best(False, None, None, None, None, evaluated, seconds)
    gamma = None if best_gamma == np.iinfo(np.int64).max else best_gamma
    return Best(True, (best_key >> 20) / scale, best_key & (2 ** 20 - 1), gamma, best_ix, evaluated, seconds)


PINNED_FIELDS = ("num_gpus", "tp", "pp", "ep", "zero", "precision", "optimizer", "offload", "checkpointing", "loss",
                 "micro_batch", "lora_rank", "kv_cache", "grad_accum", "attention", "lora_targets")


def _pinned_tables(m, gpu, s) -> Tables:
    """Tables of an instance whose every choice is pinned to the Strategy `s`."""
    from planner.domains import GpuAllowance, Instance

    pins = {f: getattr(s, f) for f in PINNED_FIELDS}
    pins["weights"] = s.weight_format
    if s.workload == "serve":
        pins = {k: v for k, v in pins.items() if k in ("num_gpus", "tp", "pp", "ep", "weights", "kv_cache")}
        pins["concurrency"] = s.concurrency
        extra = dict(total_concurrency=s.concurrency * s.dp, context=s.context)
    else:
        extra = dict(seq_len=s.seq_len)
    inst = Instance(model=m, workload=s.workload, gpus=(GpuAllowance(gpu=gpu),), pins=pins, **extra)
    return build_tables(Domains(inst))


def table_memory(m, gpu, s) -> dict[str, int]:
    """Allocated MiB of one Strategy by the tables, in memory.py's phase names (the larger pipeline
    stage; backward includes its end and the recomputation): what the consistency tests compare."""
    t = _pinned_tables(m, gpu, s)
    _, phases = evaluate(t, {b: np.array(0) for b in BLOCKS})
    out: dict[str, int] = {}
    for name, value in phases.items():
        stage, phase = name.split(":")
        if stage == "last" and s.pp == 1:
            continue
        label = "backward" if phase.startswith("backward") else phase
        out[label] = max(out.get(label, 0), int(value))
    return out


# --- time: GPU-seconds per token (planner/solve_time.py), the same integer arithmetic ------------------

def gpu_time_per_token(t: Tables, tt, ix: dict, cols: dict) -> tuple[np.ndarray, np.ndarray]:
    """(GPU time per token in GAMMA_UNIT, within the time model's ranges) for broadcast indices."""
    from planner.solve_time import FINE, FIX, GAMMA_UNIT, TIME_MAX, TIME_UNIT, TOKEN_UNIT

    d = t.domains
    g = ix["gpu"]
    tp, pp, dp = cols["tp"], cols["pp"], cols["dp"]
    if not d.inst.is_training:
        r, kv = ix["regime"], ix["kv_cache"]
        host = np.stack([s.host for s in tt.serving])[g, r]
        body = np.stack([s.body for s in tt.serving])[g, cols["tp_i"], cols["ep_i"], r, cols["dp_i"]]
        kv_read = ceil_div(np.stack([s.kv_tokens for s in tt.serving])[g, cols["dp_i"]]
                           * np.stack([s.kv_rate for s in tt.serving])[g, cols["mp_i"], kv], FIX)
        step = np.maximum(host, body + kv_read)        # TIME_UNIT / FINE
        tokens = t.serve_concurrency[cols["dp_i"]]
        ok = step <= TIME_MAX
        ratio = round(TIME_UNIT / TOKEN_UNIT / FINE)
    else:
        step, tokens, ok = _training_step(t, tt, ix, cols)
        ratio = round(TIME_UNIT / TOKEN_UNIT)
    per_token = ceil_div(step * ratio, tokens)
    gamma = ceil_div(tp * pp * per_token, round(GAMMA_UNIT / TOKEN_UNIT))
    return gamma, ok & (per_token <= TIME_MAX) & (gamma <= TIME_MAX)


def _training_step(t: Tables, tt, ix: dict, cols: dict):
    from fractions import Fraction

    from planner.solve_time import FINE, FIX, TIME_MAX, dp_volume_coefficients

    d = t.domains
    g, r, z = ix["gpu"], ix["regime"], np.array(d.zero)[ix["zero"]]
    p = t.regime_precision[r]
    c, f, k, mbi = ix["checkpointing"], ix["loss"], ix["lora_rank"], ix["micro_batch"]
    tp, pp, dp, ep = cols["tp"], cols["pp"], cols["dp"], cols["ep"]
    T = {name: np.stack([getattr(x, name) for x in tt.training]) for name in (
        "layer_compute", "layer_comm", "head", "weight_prep", "pp_send_kib", "pp_rate", "dp_rate", "dp_expert_rate",
        "optimizer_rate", "offload_rate")}
    latency = np.array([x.latency for x in tt.training])[g]
    pp_latency = np.array([x.pp_latency for x in tt.training])[g]
    node = np.array([x.node for x in tt.training])[g]
    ti, ei, mi, di = cols["tp_i"], cols["ep_i"], cols["mp_i"], cols["dp_i"]
    layer_c = T["layer_compute"][g, ti, ei, mbi, p, c, k]
    layer_x = T["layer_comm"][g, ti, ei, mbi, p, c]
    head = T["head"][g, ti, mbi, p, f]
    prep = T["weight_prep"][g, mi, ei, r, c]
    rate_pp = T["pp_rate"][g, mi, di]
    pp_c = np.where(rate_pp > 0, ceil_div(rate_pp * T["pp_send_kib"][g, mbi, p], FIX) + pp_latency, 0)
    # data-parallel volumes (KiB) of the last stage's classes, dense over dp, experts over dp/ep
    st = t.stages[1]
    coef = dp_volume_coefficients(d, t)
    zero3 = z >= 3
    dense = {name: 0 for name in coef}
    experts = {name: 0 for name in coef}
    for qi, cl in enumerate(st.classes):
        rank = k if cl.own.shape[0] > 1 else 0
        own = cl.own[rank, mi]
        per_ep = ceil_div(cl.experts[mi], ep)
        for name, table in coef.items():
            w = np.ceil(table[:, qi] * 1024).astype(np.int64)[r]
            dense[name] = dense[name] + w * own
            experts[name] = experts[name] + w * np.where(cl.experts[mi] > 0, per_ep, 0)
    dpe = np.maximum(dp // ep, 1)
    dp_parts = {}
    for name, calls in (("step", 1), ("micro", 3)):
        vol_d, vol_e = ceil_div(dense[name], 1024), ceil_div(experts[name], 1024)
        lat = calls * (latency + np.where(dpe > 1, latency, 0))
        value = ceil_div(T["dp_rate"][g, ti, di] * vol_d + T["dp_expert_rate"][g, ti, di, ei] * vol_e, FIX) + lat
        dp_parts[name] = np.where(dp > 1, value, 0)
    dp_step = np.where(zero3, 0, dp_parts["step"])
    dp_micro = np.where(zero3, dp_parts["micro"], 0)
    trained = next(cl for cl in st.classes if cl.threshold == 1)
    rank = k if trained.own.shape[0] > 1 else 0
    q1 = np.where(z >= 1, trained.sharded(rank, mi, dp), trained.unsharded(rank, mi, ep))
    optimizer = ceil_div(T["optimizer_rate"][g, r] * q1, FIX)
    n = tp * pp * dp
    per_node = np.minimum(n, node)
    offload = np.where(np.array([x.offload for x in d.regimes])[r],
                       ceil_div(T["offload_rate"][g, per_node - 1] * q1, FIX), 0)
    layers = st.layers[mi]
    compute = ceil_div(layers * layer_c + FINE * (head + prep), FINE)
    comm = ceil_div(layers * layer_x + FINE * pp_c, FINE)
    total = compute + comm
    o = tt.overlap
    e3 = np.maximum(0, ceil_div(dp_micro * o.denominator - o.numerator * compute, o.denominator))
    rec = np.where(np.array(d.checkpointing)[c] == "full", 1, 0)
    e12 = 0
    for rv in (0, 1):
        share = Fraction(2 + rv, 3 + rv) * o
        e = np.maximum(0, ceil_div(dp_step * share.denominator - share.numerator * compute, share.denominator))
        e12 = np.where(rec == rv, e, e12)
    ga = t.grad_accum[mbi, di]
    accumulated = ga * (total + e3)
    step = accumulated + (pp - 1) * total + e12 + optimizer + offload
    tokens = np.array(d.micro_batch)[mbi] * ga * d.inst.seq_len
    ok = (step <= TIME_MAX) & (accumulated <= TIME_MAX) & (total + e3 <= TIME_MAX)
    return step, tokens, ok


def table_time(m, gpu, s) -> dict:
    """Step (or TPOT) seconds and GPU-seconds per token of one Strategy by the time tables."""
    from planner.solve_time import GAMMA_UNIT, TIME_UNIT, build_time_tables

    t = _pinned_tables(m, gpu, s)
    tt = build_time_tables(t)
    ix = {b: np.array(0) for b in BLOCKS}
    cols = {k: v[0] for k, v in _layout_columns(t.domains).items()}
    gamma, ok = gpu_time_per_token(t, tt, ix, cols)
    if t.domains.inst.is_training:
        step, _, _ = _training_step(t, tt, ix, cols)
    else:
        step = None
    return {"gamma_seconds": float(gamma) * GAMMA_UNIT, "ok": bool(ok),
            "step_seconds": None if step is None else float(step) * TIME_UNIT}

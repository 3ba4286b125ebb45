"""Per-GPU peak memory of a training step or of serving, as named terms (bytes per GPU).

Terms: weights, gradients, optimizer, activations (with logits and loss buffers), kv_cache, and
overhead (CUDA context, NCCL buffers, allocator slack: what PyTorch tensors do not show).
The peak is the largest of the phases (forward, backward, optimizer step; prefill, decode).

The model is factored so that the CP-SAT planner can read it as coefficient tables:
  model states  = bytes_per_param(regime) x params_on_gpu(layout) / zero_shard(zero stage, dp)
  activations   = bytes_per_token(checkpointing, ...) x tokens(micro_batch, seq) x layers_in_flight / tp
Sources: reference/formulas.md §1.1 (ZeRO, Megatron), §1.2 (activations), §1.5 (serving).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from pydantic import BaseModel, Field

from catalog import runtime_constants
from catalog.schema import GpuSpec, ModelArch
from planner import activations as act
from planner.params import count_params, lora_params
from planner.strategy import Strategy

TERMS = ("weights", "gradients", "optimizer", "activations", "kv_cache", "overhead")


class MemoryBreakdown(BaseModel):
    """Per-GPU memory at the peak phase, in bytes. The six terms sum to `total`."""

    weights: int = Field(..., description="parameters held on this GPU (incl. gathered ZeRO-3 units)")
    gradients: int = Field(..., description="gradients alive at the peak (fp32 main grads under bf16-mixed)")
    optimizer: int = Field(..., description="optimizer states, fp32 master weights, step temporaries")
    activations: int = Field(..., description="saved activations, logits and loss buffers")
    kv_cache: int = Field(..., description="serving: K and V of every concurrent token")
    overhead: int = Field(..., description="CUDA context, NCCL buffers, allocator fragmentation")
    total: int = Field(..., description="sum of the six terms")
    capacity: int = Field(..., description="usable bytes: GPU memory (x memory_utilization when serving)")
    fits: bool = Field(..., description="total <= capacity")
    peak_phase: str = Field(..., description="phase of the peak: forward, backward, optimizer, prefill or decode")
    phases: dict[str, int] = Field(..., description="allocated bytes (total minus overhead) at each phase's peak")
    host_offload_per_node: int = Field(0, description="CPU memory per node that --offload needs (fp32 master "
                                                         "weights, optimizer states and fp32 gradients); not checked "
                                                         "against the node's RAM, which the catalog does not know")

    @property
    def allocated(self) -> int:
        return self.total - self.overhead


# --- bytes per parameter of each precision regime -----------------------------------------------

@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter. Trainable: weight, grad, master, optimizer states, step temporaries."""

    weight: float
    grad: float
    master: float
    states: float
    step_temp: float
    grads_persist: bool  # grad buffers live through forward/backward (Megatron main_grad, accumulation)


def state_bytes(s: Strategy, trainable_adapter: bool = False) -> StateBytes:
    """ZeRO paper §3.1 (16 B/param mixed Adam), Megatron dist_optimizer.md (18 with fp32 main grads),
    DeepSpeed/PyTorch for pure bf16 and fp32; bitsandbytes 8-bit Adam keeps 1 B per state."""
    p = s.precision
    if trainable_adapter and p in ("bf16-mixed", "fp8-mixed"):
        p = "fp32"  # PEFT keeps adapters in fp32 under a bf16 base: they are their own master copy
    weight = {"fp32": 4, "amp": 4, "bf16": 2, "bf16-mixed": 2, "fp8-mixed": 2}[p]
    grad = {"fp32": 4, "amp": 4, "bf16": 2, "bf16-mixed": 4, "fp8-mixed": 4}[p]
    master = 4 if p in ("bf16-mixed", "fp8-mixed") else 0
    state_el = 2 if p == "bf16" else 4       # Adam m and v live in the dtype of what it updates
    states = {"adamw": 2 * state_el, "adamw-8bit": 2 * 1, "sgd": 0}[s.optimizer]
    # torch foreach AdamW allocates sqrt(v) for every parameter of the group (one state-sized temp)
    temp = {"adamw": state_el, "adamw-8bit": 0, "sgd": 0}[s.optimizer]
    persist = p in ("bf16-mixed", "fp8-mixed") or s.grad_accum > 1 or s.pp > 1
    return StateBytes(weight, grad, master, states, temp, persist)


def frozen_weight_bytes(s: Strategy) -> float:
    """Bytes per parameter of frozen (LoRA base) or served linear weights."""
    fmt = s.weight_format
    if fmt == "bf16":
        return 4 if (s.is_training and s.precision in ("fp32", "amp")) else 2
    return runtime_constants()["formats"][fmt]


# --- parameters on one GPU -------------------------------------------------------------------------

@dataclass(frozen=True)
class GpuParams:
    """Parameters held by the most loaded pipeline stage, divided by TP/EP (before ZeRO sharding)."""

    dense_linear: float     # attention + dense MLP + router matrices
    expert: float           # expert matrices (sharded by ep*tp)
    embed: float            # embedding and/or lm_head (vocab-parallel over tp)
    small: float            # norms, q/k norms, biases (replicated)
    lora: float             # adapter parameters
    layers: int             # decoder layers on the stage
    largest_layer: float    # parameters of one layer on this GPU (ZeRO-3 gathers one at a time)

    @property
    def base(self) -> float:
        return self.dense_linear + self.expert + self.embed + self.small


def unquantized_base_bytes(s: Strategy) -> int:
    """Bytes per parameter of the frozen pieces quantization leaves alone (embeddings, head, norms)."""
    return 4 if s.precision in ("fp32", "amp") else 2


def first_layer_grad_share(m: ModelArch, s: Strategy, gp: "GpuParams", first_stage: bool) -> float:
    """Share of this GPU's gradients that do not exist yet while the first layer runs its backward:
    that layer's trainable parameters and, on the first stage, an untied trained embedding."""
    if s.is_peft:
        layer = gp.lora / gp.layers
        trainable = gp.lora
        untied = 0.0
    else:
        layer = gp.largest_layer
        trainable = gp.dense_linear + gp.embed + gp.small + gp.expert
        untied = count_params(m).embedding / s.tp if (first_stage and not m.tie_word_embeddings) else 0.0
    return (layer + untied) / trainable if trainable else 1.0


def stage_layers(m: ModelArch, pp: int) -> int:
    return math.ceil(m.num_hidden_layers / pp)


def gpu_params(m: ModelArch, s: Strategy, first_stage: bool = True) -> GpuParams:
    pc = count_params(m)
    L = m.num_hidden_layers
    n = stage_layers(m, s.pp)
    frac = n / L
    if s.pp == 1:
        embed = pc.embedding + pc.lm_head
    elif first_stage:
        embed = pc.embedding
    else:  # the last stage holds the head (a copy of the embedding when tied)
        embed = pc.lm_head_matmul
    dense = (pc.attn_linear + pc.dense_mlp + pc.router) * frac / s.tp
    expert = pc.experts * frac / (s.tp * s.ep)
    small = (pc.attn_other + pc.norms) * frac + pc.final_norm
    lora = lora_params(m, s.lora_rank, s.lora_targets) * frac / s.tp if s.is_peft else 0
    largest = dense / n + expert / n
    return GpuParams(dense, expert, embed / s.tp, small, lora, n, largest)


# --- training ------------------------------------------------------------------------------------

def _overhead(allocated: float, s: Strategy) -> int:
    rc = runtime_constants()["overhead"]
    groups = sum(1 for degree in (s.tp, s.pp, s.dp, s.ep) if degree > 1)
    fixed = rc["cuda_context_bytes"] + groups * rc["nccl_bytes_per_group"]
    if s.workload == "serve":
        # engines preallocate the KV cache (no fragmentation of it) but capture CUDA graphs
        return int(fixed + runtime_constants()["serving"]["cuda_graph_bytes"])
    return int(fixed + rc["fragmentation_fraction"] * allocated)


def _stage_training(m: ModelArch, s: Strategy, first_stage: bool) -> dict[str, dict[str, float]]:
    """Terms of each phase for one pipeline stage."""
    gp = gpu_params(m, s, first_stage)
    dp_dense = s.dp
    dp_expert = max(s.dp // s.ep, 1)

    def shard(dense: float, expert: float, stage: int) -> float:
        # ZeRO stage >= `stage` shards this state over the (expert-)data-parallel group
        if s.zero >= stage:
            return dense / dp_dense + expert / dp_expert
        return dense + expert

    other = gp.dense_linear + gp.embed + gp.small
    if s.is_peft:
        sb = state_bytes(s, trainable_adapter=True)
        fw = frozen_weight_bytes(s)
        # quantization applies to linear layers; embeddings, head and norms stay in 16 bit
        frozen_dense = gp.dense_linear * fw + (gp.embed + gp.small) * unquantized_base_bytes(s)
        weights = shard(frozen_dense, gp.expert * fw, 3) + shard(gp.lora * sb.weight, 0, 3)
        trainable_dense, trainable_expert = gp.lora, 0.0
    else:
        sb = state_bytes(s)
        weights = shard(other * sb.weight, gp.expert * sb.weight, 3)
        trainable_dense, trainable_expert = other, gp.expert
    grads = shard(trainable_dense * sb.grad, trainable_expert * sb.grad, 2)
    optim = 0.0 if s.offload else shard((sb.master + sb.states) * trainable_dense,
                                        (sb.master + sb.states) * trainable_expert, 1)
    step_temp = 0.0 if s.offload else shard(sb.step_temp * trainable_dense, sb.step_temp * trainable_expert, 1)
    if s.offload:
        grads = shard(trainable_dense * 2, trainable_expert * 2, 2)  # low-precision grads before the copy out
    if s.zero >= 3 and s.dp > 1:
        # FSDP/ZeRO-3 gathers one layer at a time and prefetches the next (DeepSpeed: 4 x largest layer)
        unit_bytes = (frozen_weight_bytes(s) if s.is_peft else sb.weight) * gp.largest_layer
        weights += 2 * unit_bytes
        if not s.is_peft:
            grads += gp.largest_layer * sb.grad  # one unsharded layer gradient before reduce-scatter

    # activations of this stage: 1F1B keeps min(pp, m) micro-batches in flight on the first stage
    tokens = s.micro_batch * s.seq_len
    in_flight = min(s.pp, s.grad_accum) if first_stage else 1
    is_last = s.pp == 1 or not first_stage
    moe_frac = count_params(m).moe_layers / m.num_hidden_layers
    per_layer = ((1 - moe_frac) * act.layer_bytes_per_token(m, s, False)
                 + moe_frac * act.layer_bytes_per_token(m, s, True)) if m.is_moe else \
        act.layer_bytes_per_token(m, s, False)
    if s.checkpointing == "full":
        stored = act.checkpoint_bytes_per_token(m, s)
    elif s.checkpointing == "selective":
        stored = act.selective_bytes_per_token(m, s, m.is_moe)
    else:
        stored = per_layer
    merged = act.peft_expert_merge_bytes(m, s) * moe_frac / (s.tp * s.ep)  # per layer, not per token
    kept_merged = merged if s.checkpointing != "full" else 0.0
    layers_stack = gp.layers * in_flight * (stored * tokens / s.tp + kept_merged)
    recompute = per_layer * tokens / s.tp + merged if s.checkpointing != "none" else 0.0
    head = sum(act.head_items(m, s).values()) * tokens / s.tp if is_last else 0.0
    loss_fwd, loss_bwd = act.loss_bytes_per_token(m, s) if is_last else (0.0, 0.0)
    loss_fwd, loss_bwd = loss_fwd * tokens / s.tp, loss_bwd * tokens / s.tp
    # gradient contributions of a trained lm_head meeting (chunked loss, tied embedding)
    head_grad = count_params(m).lm_head_matmul / s.tp * sb.weight if (is_last and not s.is_peft) else 0.0
    k_during, k_sum, k_tied = act.head_grad_partials(s)
    if s.loss == "fused":
        loss_bwd = max(loss_bwd + k_during * head_grad, k_sum * head_grad)
    tied_extra = k_tied * head_grad if (m.tie_word_embeddings and s.pp == 1) else 0.0
    # autocast keeps bf16 copies of the matmul weights until their layer's backward has run
    cache = act.autocast_weight_cache_bytes(s) * (gp.dense_linear + gp.expert + (gp.embed if is_last else 0))

    g_live = grads if sb.grads_persist else 0.0
    forward_act = layers_stack + head + loss_fwd + cache
    # backward: at the loss every activation is alive; later layers free theirs as gradients appear;
    # with checkpointing one layer is recomputed at a time on top of the stored inputs
    backward_start = layers_stack + head + loss_bwd + cache
    backward_late = layers_stack + recompute
    last_layer = recompute if s.checkpointing != "none" else per_layer * tokens / s.tp + merged
    first_layer_grads = grads * first_layer_grad_share(m, s, gp, first_stage)
    phases = {
        "forward": {"weights": weights, "gradients": g_live, "optimizer": optim, "activations": forward_act},
        "backward": {"weights": weights, "gradients": g_live, "optimizer": optim,
                     "activations": max(backward_start, backward_late)},
        # the first layer's backward runs before its own (and an untied embedding's) gradients exist
        "backward_last_layer": {"weights": weights, "gradients": max(grads - first_layer_grads, g_live),
                                "optimizer": optim, "activations": last_layer},
        "backward_end": {"weights": weights, "gradients": grads, "optimizer": optim, "activations": tied_extra},
        "optimizer": {"weights": weights, "gradients": grads, "optimizer": optim + step_temp, "activations": 0.0},
    }
    return phases


def offload_host_bytes_per_gpu(m: ModelArch, s: Strategy) -> float:
    """CPU memory one GPU's offloaded optimizer partition needs: fp32 master weights, optimizer states
    and an fp32 gradient buffer per trained parameter of its ZeRO shard (ZeRO-Offload, Ren et al. 2021)."""
    if not s.offload:
        return 0.0
    gp = gpu_params(m, s)
    sb = state_bytes(s, trainable_adapter=s.is_peft)
    per_param = max(sb.master, 4) + sb.states + 4
    if s.is_peft:
        return per_param * gp.lora / (s.dp if s.zero >= 1 else 1)
    dense = gp.dense_linear + gp.embed + gp.small
    if s.zero >= 1:
        return per_param * (dense / s.dp + gp.expert / max(s.dp // s.ep, 1))
    return per_param * (dense + gp.expert)


def training_memory(m: ModelArch, gpu: GpuSpec, s: Strategy) -> MemoryBreakdown:
    stages = [_stage_training(m, s, first_stage=True)]
    if s.pp > 1:
        stages.append(_stage_training(m, s, first_stage=False))
    best: Optional[tuple[float, str, dict]] = None
    phase_totals: dict[str, int] = {}
    for phases in stages:
        for name, terms in phases.items():
            label = "backward" if name.startswith("backward") else name
            total = sum(terms.values())
            phase_totals[label] = max(phase_totals.get(label, 0), int(total))
            if best is None or total > best[0]:
                best = (total, label, terms)
    _, phase, terms = best
    out = _breakdown(terms, phase, phase_totals, gpu.memory_bytes, s)
    gpus_in_node = min(s.num_gpus, gpu.gpus_per_node)
    out.host_offload_per_node = int(math.ceil(offload_host_bytes_per_gpu(m, s) * gpus_in_node))
    return out


def _breakdown(terms: dict, phase: str, phase_totals: dict, capacity: int, s: Strategy) -> MemoryBreakdown:
    values = {t: int(math.ceil(terms.get(t, 0.0))) for t in TERMS if t != "overhead"}
    allocated = sum(values.values())
    values["overhead"] = _overhead(allocated, s)
    total = allocated + values["overhead"]
    return MemoryBreakdown(**values, total=total, capacity=int(capacity), fits=total <= capacity,
                           peak_phase=phase, phases=phase_totals)


# --- serving -------------------------------------------------------------------------------------

def kv_bytes_per_token(m: ModelArch, s: Strategy) -> float:
    """K and V for every layer on this GPU: 2 * L * kv_heads * head_dim * bytes (formulas.md §1.5).
    TP splits the KV heads, with at least one head per GPU (replicated when tp > kv heads)."""
    el = 2 if s.kv_cache == "bf16" else 1
    heads = max(m.num_key_value_heads / s.tp, 1)
    return 2 * stage_layers(m, s.pp) * heads * m.head_dim * el


def serving_memory(m: ModelArch, gpu: GpuSpec, s: Strategy) -> MemoryBreakdown:
    gp = gpu_params(m, s)
    fw = frozen_weight_bytes(s)
    weights = (gp.dense_linear + gp.expert) * fw + (gp.embed + gp.small) * 2
    kv = kv_bytes_per_token(m, s) * s.concurrency * s.context
    # prefill of one chunk (no autograd): the widest live set of a layer is the MLP (gate, up and the
    # product) plus the residual stream and attention q/k/v; logits only for the last token per sequence
    chunk = min(runtime_constants()["serving"]["prefill_chunk_tokens"], s.concurrency * s.context)
    width = (3 * m.moe_intermediate_size * m.num_experts_per_tok if m.is_moe else 3 * m.intermediate_size)
    per_token = 2 * (width + 2 * m.hidden_size + m.q_width + 2 * m.kv_width) / s.tp
    prefill = chunk * per_token + s.concurrency * m.vocab_size * 4 / s.tp
    # decode: one token per sequence; the same live set for `concurrency` tokens
    decode = s.concurrency * (per_token + m.vocab_size * 4 / s.tp)
    phases = {"prefill": weights + kv + prefill, "decode": weights + kv + decode}
    phase = max(phases, key=phases.get)
    terms = {"weights": weights, "kv_cache": kv, "activations": prefill if phase == "prefill" else decode}
    capacity = int(gpu.memory_bytes * s.memory_utilization)
    return _breakdown(terms, phase, {k: int(v) for k, v in phases.items()}, capacity, s)


def estimate_memory(m: ModelArch, gpu: GpuSpec, s: Strategy) -> MemoryBreakdown:
    return serving_memory(m, gpu, s) if s.workload == "serve" else training_memory(m, gpu, s)

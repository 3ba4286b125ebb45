"""Speed model: step time of training and TTFT/TPOT of serving, built from a few timed terms.

Every term is seconds on the busiest GPU (the last pipeline stage) and depends on few choices:
- GEMMs, one by one from the architecture's matrix shapes (`layer_gemms`), with an additive roofline
      t = 2MKN / (peak * gemm_max_efficiency) + gemm_traffic * bytes(MK + KN + MN) / HBM bandwidth
  (`gemm_seconds`), so the share of peak grows with the matrix sizes and falls with the GPU's
  FLOP/byte ratio (the H100 is harder to saturate than the A100); at small batch decode becomes a
  weight stream at 1/gemm_traffic of HBM bandwidth;
- attention core: hardware FLOPs (planner/flops.py) at `attention_efficiency` of peak;
- element-wise work (norms, residuals, RoPE, activation function, logits/loss): activation bytes
  (`elementwise_elements`, `head_elements`) x elementwise_traffic / HBM bandwidth;
- per micro-batch weight preparation (QLoRA dequantisation, amp casts: `weight_prep_seconds`) and the
  GPU optimizer step (`optimizer_seconds`): bytes / HBM bandwidth;
- communication (`tp_comm_seconds`, `ep_comm_seconds`, `pp_comm_seconds`, `dp_comm`): ring collectives
  at link_efficiency x the catalog bandwidth (`link_bandwidth`: the GPU link inside a node, the
  node's NICs across nodes) plus a latency per call; DP/ZeRO traffic hides behind compute only as far
  as `exposed` allows (overlap x the window), TP/EP/PP traffic is exposed;
- pipeline bubble: p-1 micro-batch slots (`bubble_fraction` = (p-1)/(m+p-1) of the step); CPU offload
  (`offload_seconds`): PCIe transfers and the CPU Adam step.
Serving: `prefill_seconds` (TTFT) and `decode_step_seconds` (TPOT) run the same terms forward-only,
plus a serving engine's host/GPU time per layer and KV-read traffic.
The CP-SAT planner can tabulate these factor functions over the few choices each depends on.
Constants: catalog/calibration.toml, with the measurements they were fitted on.
Formulas: reference/formulas.md §2.1-§2.4, nccl-tests PERFORMANCE.md (ring factors), ZeRO §7.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

from pydantic import BaseModel, Field

from catalog import DATA_DIR
from catalog.schema import GpuSpec, ModelArch
from planner import flops
from planner.activations import dtypes
from planner.memory import frozen_weight_bytes, gpu_params, kv_bytes_per_token, state_bytes
from planner.params import count_params, mlp_linear_shapes
from planner.strategy import Strategy


class Throughput(BaseModel):
    """Speed of one configuration. Training: one optimizer step of micro_batch*grad_accum*dp sequences."""

    tokens_per_s: float = Field(..., description="whole cluster; training: trained tokens/s; serve: output tokens/s")
    step_seconds: Optional[float] = None
    compute_seconds: Optional[float] = None
    communication_seconds: Optional[float] = Field(None, description="exposed (not hidden behind compute)")
    bubble_seconds: Optional[float] = None
    offload_seconds: Optional[float] = None
    mfu: Optional[float] = Field(None, description="model FLOPs (flops.training_flops_per_token) / peak")
    ttft_seconds: Optional[float] = None
    tpot_seconds: Optional[float] = None
    notes: list[str] = []


# --- calibration ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Engine:
    """Serving engine, by weight format: host (CPU) time per decoder layer and forward pass (kernel
    launches, Python), which overlaps with the GPU, and fixed GPU time per layer (small kernels whose
    duration does not depend on the data); plus the HBM traffic of one cached KV byte read."""

    host_seconds_per_layer: dict
    gpu_seconds_per_layer: dict
    kv_traffic: float


@dataclass(frozen=True)
class Calibration:
    gemm_max_efficiency: dict        # by vendor
    gemm_traffic: float
    elementwise_traffic: float
    attention_efficiency: dict       # "default" and "hopper" (FlashAttention-2 class kernels)
    hopper_gpus: tuple
    link_efficiency: float
    overlap: float
    collective_latency_s: float
    cpu_adam_seconds_per_param: float
    engines: dict


@lru_cache(maxsize=1)
def calibration() -> Calibration:
    with open(DATA_DIR / "calibration.toml", "rb") as f:
        raw = tomllib.load(f)
    g, t, sv = raw["gemm"], raw["training"], raw["serving"]
    engines = {name: Engine(e["host_seconds_per_layer"], e["gpu_seconds_per_layer"], e["kv_traffic"])
               for name, e in sv["engines"].items()}
    return Calibration(
        gemm_max_efficiency=g["max_efficiency"], gemm_traffic=g["traffic"],
        elementwise_traffic=t["elementwise_traffic"], attention_efficiency=t["attention_efficiency"],
        hopper_gpus=tuple(t["hopper_gpus"]),
        link_efficiency=t["link_efficiency"], overlap=t["overlap"],
        collective_latency_s=t["collective_latency_s"],
        cpu_adam_seconds_per_param=t["cpu_adam_seconds_per_param"], engines=engines)


# --- GPU rates ------------------------------------------------------------------------------------

def peak_flops(gpu: GpuSpec, precision: str) -> float:
    """Dense tensor FLOP/s of the GEMMs of a precision regime (fp8 only for fp8 GEMMs; V100/T4 have no
    bf16 and run fp16)."""
    if precision == "fp32":
        return gpu.fp32_tflops * 1e12
    if precision == "fp8" and gpu.fp8_tflops:
        return gpu.fp8_tflops * 1e12
    return (gpu.bf16_tflops or gpu.fp16_tflops) * 1e12


def attention_efficiency(m: ModelArch, gpu: GpuSpec, cal: Calibration) -> float:
    """Share of peak the attention kernels reach. FlashAttention-2 uses Ampere-style instructions and
    reaches 50-73% of peak on A100 but ~35% on H100 (FlashAttention-2 and -3 papers), so Hopper and
    later GPUs get their own constant. Its kernels exist for head dims 32, 64, 96, 128, 160, 192, 224,
    256 (flash-attn csrc flash_fwd_hdim*.cu): other head dims run padded to the next one."""
    key = "hopper" if gpu.name in cal.hopper_gpus else "default"
    padded = min(d for d in (32, 64, 96, 128, 160, 192, 224, 256, m.head_dim) if d >= m.head_dim)
    return cal.attention_efficiency[key] * m.head_dim / padded


def hbm(gpu: GpuSpec) -> float:
    return gpu.hbm_gbps * 1e9


def gemm_seconds(gpu: GpuSpec, M: float, K: float, N: float, peak: float, act_el: float, w_el: float,
                 cal: Calibration) -> float:
    """One (M x K) @ (K x N) product: math at the achievable peak plus operand/output traffic not hidden
    behind it (additive roofline). The two constants come from measured max matmul FLOPs (calibration)."""
    math_s = 2 * M * K * N / (peak * cal.gemm_max_efficiency[gpu.vendor])
    bytes_ = act_el * (M * K + M * N) + w_el * K * N
    return math_s + cal.gemm_traffic * bytes_ / hbm(gpu)


# --- matrix shapes of one decoder layer on one GPU ---------------------------------------------------

def layer_gemms(m: ModelArch, s: Strategy, tokens: float, moe: bool,
                experts: tuple[float, float] | None = None) -> list[tuple[float, float, float, float, bool]]:
    """(M, K, N, count, trained) of every matmul of one decoder layer on one GPU, for `tokens` tokens.

    TP splits heads and MLP width (column/row parallel); KV heads are replicated when tp > kv heads.
    MoE: `experts` = (experts run on this GPU, tokens each), by default the E/ep local experts with
    balanced routing (tokens*ep*k/E each). LoRA adapters add (M, d_in, r) and (M, r, d_out) products.
    """
    t, h = s.tp, m.hidden_size
    q = m.q_width / t
    kv = max(m.num_key_value_heads / t, 1) * m.head_dim
    base_trained = not s.is_peft
    shapes = [(tokens, h, q, "q_proj"), (tokens, h, kv, "k_proj"), (tokens, h, kv, "v_proj"),
              (tokens, q, h, "o_proj")]
    out = [(M, K, N, 1.0, base_trained) for M, K, N, _ in shapes]
    adapted = [(M, K, N, 1.0) for M, K, N, name in shapes if s.is_peft and name in s.lora_targets]
    if moe:
        count, rows = experts or (m.num_experts / s.ep, tokens * s.ep * m.num_experts_per_tok / m.num_experts)
        out.append((tokens, h, m.num_experts, 1.0, base_trained))
        width = m.moe_intermediate_size / t
    else:
        width, count, rows = m.intermediate_size / t, 1.0, tokens
    for name, (i, o) in mlp_linear_shapes(m, 1).items():
        K, N = (h, width) if i == h else (width, h)
        out.append((rows, K, N, count, base_trained))
        if s.is_peft and name in s.lora_targets:
            adapted.append((rows, K, N, count))
    r = s.lora_rank
    for M, K, N, c in adapted:
        out += [(M, K, r, c, True), (M, r, N, c, True)]
    return out


def elementwise_elements(m: ModelArch, s: Strategy, moe: bool) -> float:
    """Activation elements one token writes in one decoder layer's forward (element-wise ops):
    2 norms, q/k/v, RoPE'd q and k (+QK-norm), attention output, o_proj, 2 residual sums, MLP (SwiGLU:
    gate, up, SiLU, product; GELU: up, GELU) and down_proj; MoE: router logits and softmax, the k
    experts' MLPs and, without expert parallelism, the token permutation copies (with EP the
    all-to-all kernels write them: ep_comm_seconds). Eager attention adds the s x s scores and probs."""
    h, q, g = m.hidden_size, m.q_width, m.kv_width
    n = 6 * h + 3 * q + 3 * g + (q + g if m.qk_norm else 0)
    mlp_el = 4 if m.gated_mlp else 2
    if moe:
        k = m.num_experts_per_tok
        n += 2 * m.num_experts + k * (mlp_el * m.moe_intermediate_size + h) + (2 * k * h if s.ep == 1 else 0)
    else:
        n += mlp_el * m.intermediate_size
    if s.attention == "eager":
        n += 3 * m.num_attention_heads * s.seq_len
    return n / s.tp  # sequence parallel splits the norm/residual region too


def selective_share(m: ModelArch) -> float:
    """Share of a layer's element-wise work that selective recomputation redoes (norms, RoPE and the
    activation function: what planner/memory.py's selective mode does not keep)."""
    h, f = m.hidden_size, m.moe_intermediate_size if m.is_moe else m.intermediate_size
    redo = 2 * h + m.q_width + m.kv_width + f
    return redo / (6 * h + 3 * m.q_width + 3 * m.kv_width + 4 * f)


def head_elements(m: ModelArch, s: Strategy) -> float:
    """Elements per token of the final norm and logits; an unfused loss adds the fp32 upcast and the
    fp32 log-softmax and its gradient (3.5 bf16-element equivalents per logit instead of 1)."""
    return m.hidden_size + m.vocab_size / s.tp * (1.0 if s.loss == "fused" else 3.5)


def moe_fraction(m: ModelArch) -> float:
    return count_params(m).moe_layers / m.num_hidden_layers


# --- training: one micro-batch on the busiest GPU ------------------------------------------------------

@dataclass(frozen=True)
class MicroBatch:
    """Seconds of one micro-batch on the last pipeline stage, by term."""

    gemm: float
    attention: float
    elementwise: float
    weight_prep: float
    tp_comm: float
    ep_comm: float
    pp_comm: float

    @property
    def compute(self) -> float:
        return self.gemm + self.attention + self.elementwise + self.weight_prep

    @property
    def total(self) -> float:
        return self.compute + self.tp_comm + self.ep_comm + self.pp_comm


def gemm_elements(s: Strategy) -> tuple[float, float, str]:
    """(activation bytes, weight bytes, peak regime) of the training GEMMs."""
    if s.precision == "fp32":
        return 4, 4, "fp32"
    if s.precision == "fp8-mixed":
        return 1, 1, "fp8"
    return 2, 2, "bf16"   # bf16, bf16-mixed, amp (autocast), and dequantised QLoRA weights


def layer_gemm_seconds(m: ModelArch, gpu: GpuSpec, s: Strategy, tokens: float, moe: bool,
                       cal: Calibration) -> float:
    """GEMM seconds of one decoder layer in training: every matmul runs forward, dgrad, wgrad (trained
    weights only) and, with full checkpointing, the recomputed forward; all three share one shape set."""
    a_el, w_el, regime = gemm_elements(s)
    peak = peak_flops(gpu, regime)
    rec = flops.recompute_passes(s)
    return sum((2 + trained + rec) * count * gemm_seconds(gpu, M, K, N, peak, a_el, w_el, cal)
               for M, K, N, count, trained in layer_gemms(m, s, tokens, moe))


def microbatch_seconds(m: ModelArch, gpu: GpuSpec, s: Strategy, cal: Calibration | None = None) -> MicroBatch:
    cal = cal or calibration()
    tokens = s.micro_batch * s.seq_len
    layers = math.ceil(m.num_hidden_layers / s.pp)
    rec = flops.recompute_passes(s)
    f_moe = moe_fraction(m)
    per_layer = (1 - f_moe) * layer_gemm_seconds(m, gpu, s, tokens, False, cal)
    if f_moe:
        per_layer += f_moe * layer_gemm_seconds(m, gpu, s, tokens, True, cal)
    a_el, w_el, regime = gemm_elements(s)
    head_passes = 2 if s.is_peft else 3          # the lm_head is frozen under PEFT, never recomputed
    head = head_passes * gemm_seconds(gpu, tokens, m.hidden_size, m.vocab_size / s.tp, peak_flops(gpu, regime),
                                      a_el, w_el, cal)
    gemm = layers * per_layer + head

    attn_flops = flops.attention_hardware_flops_per_token(m, s) / m.num_hidden_layers / s.tp
    attention = layers * tokens * attn_flops / (peak_flops(gpu, "bf16") * attention_efficiency(m, gpu, cal))

    ab = dtypes(s).act
    redo = rec + (selective_share(m) if s.checkpointing == "selective" else 0.0)
    el_layer = (1 - f_moe) * elementwise_elements(m, s, False) + f_moe * elementwise_elements(m, s, True)
    el_bytes = 2 * ab * tokens * (layers * el_layer * (3 + redo) + 3 * head_elements(m, s))
    elementwise = cal.elementwise_traffic * el_bytes / hbm(gpu)

    return MicroBatch(gemm, attention, elementwise, weight_prep_seconds(m, gpu, s),
                      tp_comm_seconds(m, gpu, s, tokens, layers, cal),
                      ep_comm_seconds(m, gpu, s, tokens, layers, cal),
                      pp_comm_seconds(m, gpu, s, tokens, cal))


def weight_prep_seconds(m: ModelArch, gpu: GpuSpec, s: Strategy) -> float:
    """Per micro-batch: quantized frozen weights are dequantised to bf16 at every use (forward, backward,
    recomputed forward: read the packed bytes, write 2 B); amp casts fp32 weights to bf16 once per
    forward (read 4 B, write 2 B; backward reuses the cast)."""
    gp = gpu_params(m, s, first_stage=False)
    rec = flops.recompute_passes(s)
    if s.workload == "qlora" and s.weight_format != "bf16":
        per_use = frozen_weight_bytes(s) + 2
        return (gp.dense_linear + gp.expert) * per_use * (2 + rec) / hbm(gpu)
    if s.precision == "amp":
        return gp.base * 6 * (1 + rec) / hbm(gpu)
    return 0.0


# --- communication ---------------------------------------------------------------------------------

def link_bandwidth(gpu: GpuSpec, size: int, stride: int, cal: Calibration) -> float:
    """Achieved bus bandwidth (bytes/s) of a ring collective over `size` ranks placed `stride` GPUs
    apart (TP innermost, then DP/EP, then PP). Inside a node: the GPU link. Across nodes NCCL runs one
    ring per NIC, so the group's members in a node share the network traffic: per-GPU network
    bandwidth x members per node, at most the intra-node link."""
    if size * stride <= gpu.gpus_per_node:
        gbps = gpu.intra_node_gbps
    else:
        local = max(1, min(size, gpu.gpus_per_node // stride))
        gbps = min(gpu.intra_node_gbps, gpu.inter_node_gbps * local)
    return gbps * 1e9 * cal.link_efficiency


def ring_seconds(volume: float, n: int, factor: float, bandwidth: float, cal: Calibration) -> float:
    """nccl-tests PERFORMANCE.md: all-reduce moves 2(n-1)/n of the buffer per GPU, reduce-scatter and
    all-gather (n-1)/n (factor 2 or 1); plus one latency per call."""
    if n <= 1:
        return 0.0
    return factor * (n - 1) / n * volume / bandwidth + cal.collective_latency_s


def tp_comm_seconds(m: ModelArch, gpu: GpuSpec, s: Strategy, tokens: float, layers: int,
                    cal: Calibration) -> float:
    """Megatron TP (Shoeybi et al. §3): 2 all-reduces of tokens*h activations per layer per forward,
    2 per backward, 2 per recomputed forward; not overlapped with compute."""
    if s.tp == 1:
        return 0.0
    calls = layers * 2 * (2 + flops.recompute_passes(s))
    volume = tokens * m.hidden_size * dtypes(s).act
    return calls * ring_seconds(volume, s.tp, 2, link_bandwidth(gpu, s.tp, 1, cal), cal)


def ep_comm_seconds(m: ModelArch, gpu: GpuSpec, s: Strategy, tokens: float, layers: int,
                    cal: Calibration) -> float:
    """Expert-parallel all-to-all (formulas.md §2.3): per MoE layer and pass a dispatch and a combine of
    each token's hidden state to the GPUs holding its k experts, (ep-1)/ep of it leaving the GPU; a
    token goes once to each distinct GPU, ep*(1-(1-1/ep)^k) of them under uniform routing (DeepEP and
    Megatron's flex dispatcher deduplicate); passes: forward, backward, recompute."""
    if s.ep == 1 or not m.is_moe:
        return 0.0
    calls = layers * moe_fraction(m) * 2 * (2 + flops.recompute_passes(s))
    destinations = s.ep * (1 - (1 - 1 / s.ep) ** m.num_experts_per_tok)
    volume = tokens * destinations * m.hidden_size * dtypes(s).act
    return calls * ring_seconds(volume, s.ep, 1, link_bandwidth(gpu, s.ep, s.tp, cal), cal)


def pp_comm_seconds(m: ModelArch, gpu: GpuSpec, s: Strategy, tokens: float, cal: Calibration) -> float:
    """Pipeline point-to-point: the stage output forward and its gradient backward (tokens*h each)."""
    if s.pp == 1:
        return 0.0
    bw = link_bandwidth(gpu, s.pp, s.tp * s.dp, cal)
    return 2 * (tokens * m.hidden_size * dtypes(s).act / bw + cal.collective_latency_s)


def dp_comm(m: ModelArch, gpu: GpuSpec, s: Strategy, cal: Calibration) -> tuple[float, float]:
    """(seconds per step, seconds per micro-batch) of data-parallel traffic per GPU.

    ZeRO-0/1/2: one gradient all-reduce (or reduce-scatter + all-gather, the same volume: ZeRO §7) per
    step. ZeRO-3/FSDP: per micro-batch, all-gather of the weights for forward and for backward and a
    reduce-scatter of the gradients (1.5x the DP volume at grad_accum 1). Experts reduce over dp/ep.
    Gradients and gathered weights travel in 16 bit (fp32 for fp32/amp); frozen weights in their format.
    """
    if s.dp == 1:
        return 0.0, 0.0
    gp = gpu_params(m, s, first_stage=False)
    el = 4 if s.precision in ("fp32", "amp") else 2
    bw = link_bandwidth(gpu, s.dp, s.tp, cal)
    dp_e = max(s.dp // s.ep, 1)

    def over_dp(dense_bytes: float, expert_bytes: float, factor: float) -> float:
        return ring_seconds(dense_bytes, s.dp, factor, bw, cal) + ring_seconds(expert_bytes, dp_e, factor, bw, cal)

    dense, expert = (gp.lora, 0.0) if s.is_peft else (gp.base - gp.expert, gp.expert)
    if s.zero < 3:
        return over_dp(dense * el, expert * el, 2), 0.0
    if s.is_peft:
        fw = frozen_weight_bytes(s)
        weights = (gp.dense_linear * fw + (gp.embed + gp.small) * 2, gp.expert * fw)
    else:
        weights = (dense * el, expert * el)
    return 0.0, 2 * over_dp(*weights, 1) + over_dp(dense * el, expert * el, 1)


def exposed(comm: float, window: float, cal: Calibration) -> float:
    """Communication left on the critical path when it runs concurrently with `window` seconds of
    compute: only the part that does not fit in overlap*window is exposed."""
    return max(0.0, comm - cal.overlap * window)


# --- optimizer and offload ---------------------------------------------------------------------------

def trainable_on_gpu(m: ModelArch, s: Strategy) -> float:
    """Trainable parameters this GPU updates (after TP/PP/EP and ZeRO-1+ sharding)."""
    gp = gpu_params(m, s, first_stage=False)
    if s.is_peft:
        return gp.lora / (s.dp if s.zero >= 1 else 1)
    if s.zero == 0:
        return gp.base
    return (gp.base - gp.expert) / s.dp + gp.expert / max(s.dp // s.ep, 1)


def optimizer_bytes_per_param(s: Strategy) -> float:
    """Bytes the optimizer step moves per parameter: read the gradient, read+write the weight (or the
    fp32 master and then write the 16-bit weight) and each optimizer state (memory.state_bytes)."""
    sb = state_bytes(s, trainable_adapter=s.is_peft)
    master = 2 * sb.master + sb.weight if sb.master else 2 * sb.weight
    return sb.grad + master + 2 * sb.states


def optimizer_seconds(m: ModelArch, gpu: GpuSpec, s: Strategy) -> float:
    """The optimizer step on the GPU is memory-bound: bytes moved / HBM bandwidth."""
    if s.offload:
        return 0.0
    return trainable_on_gpu(m, s) * optimizer_bytes_per_param(s) / hbm(gpu)


def offload_seconds(m: ModelArch, gpu: GpuSpec, s: Strategy, cal: Calibration | None = None) -> float:
    """ZeRO-Offload (formulas.md §1.1.4): 16-bit gradients GPU->CPU and updated 16-bit weights CPU->GPU
    over PCIe each step (both directions at once), plus the Adam step on the CPU, which all GPUs of a
    node share (memory-bound on host DRAM: cpu_adam_seconds_per_param per parameter)."""
    if not s.offload:
        return 0.0
    gpus_in_node = min(s.num_gpus, gpu.gpus_per_node)
    return trainable_on_gpu(m, s) * offload_seconds_per_param(gpu, gpus_in_node, cal or calibration())


def offload_seconds_per_param(gpu: GpuSpec, gpus_in_node: int, cal: Calibration) -> float:
    """Seconds per offloaded parameter of one GPU: 2 bytes each way over PCIe, plus its share of the
    node's CPU Adam step (the node's GPUs update their partitions on the same host)."""
    return 2 / (gpu.host_gbps * 1e9) + gpus_in_node * cal.cpu_adam_seconds_per_param


def bubble_fraction(pp: int, microbatches: int) -> float:
    """Share of a 1F1B/GPipe step spent idle: (p-1)/(m+p-1) (GPipe §2.3, Narayanan et al. §2.2.1)."""
    return (pp - 1) / (microbatches + pp - 1)


# --- training throughput -------------------------------------------------------------------------------

def training_throughput(m: ModelArch, gpu: GpuSpec, s: Strategy, cal: Calibration | None = None) -> Throughput:
    cal = cal or calibration()
    mb = microbatch_seconds(m, gpu, s, cal)
    ga = s.grad_accum
    step_dp, mb_dp = dp_comm(m, gpu, s, cal)
    # FSDP prefetch hides each micro-batch's gathers behind its compute; DDP buckets hide the gradient
    # all-reduce behind the backward of the last micro-batch (2 of 3 passes, 3 of 4 with recompute)
    rec = flops.recompute_passes(s)
    backward_share = (2 + rec) / (3 + rec)
    comm = ga * (exposed(mb_dp, mb.compute, cal) + mb.tp_comm + mb.ep_comm + mb.pp_comm)
    comm += exposed(step_dp, backward_share * mb.compute, cal)
    compute = ga * mb.compute + optimizer_seconds(m, gpu, s)
    bubble = (s.pp - 1) * mb.total
    offload = offload_seconds(m, gpu, s, cal)
    step = compute + comm + bubble + offload
    tokens = s.micro_batch * s.seq_len * ga * s.dp
    tps = tokens / step
    mfu = flops.training_flops_per_token(m, s) * tps / (s.num_gpus * peak_flops(gpu, gemm_elements(s)[2]))
    notes = [f"GEMM {mb.gemm / mb.compute:.0%}, attention {mb.attention / mb.compute:.0%}, "
             f"element-wise {mb.elementwise / mb.compute:.0%} of a micro-batch's compute"]
    if s.offload:
        notes.append("offload: ZeRO-Offload of optimizer states (PCIe + CPU Adam); weights stay on the GPU")
    return Throughput(tokens_per_s=tps, step_seconds=step, compute_seconds=compute, communication_seconds=comm,
                      bubble_seconds=bubble, offload_seconds=offload, mfu=mfu, notes=notes)


# --- serving -----------------------------------------------------------------------------------------------

def serve_elements(s: Strategy, gpu: GpuSpec) -> tuple[float, float, str]:
    """(activation bytes, weight bytes, peak regime) of serving GEMMs: fp8 weights run fp8 GEMMs where
    the GPU has them (W8A8); int8/int4/nf4 are weight-only (dequantised into bf16 GEMMs)."""
    fmt = s.weight_format
    if fmt == "fp8" and gpu.fp8_tflops:
        return 1, frozen_weight_bytes(s), "fp8"
    return 2, frozen_weight_bytes(s), "bf16"


def forward_seconds(m: ModelArch, gpu: GpuSpec, s: Strategy, tokens: float, keys: float, causal: bool,
                    logits_rows: float, engine: str, cal: Calibration,
                    experts: tuple[float, float] | None = None) -> float:
    """One forward pass of `tokens` tokens through the replica (all stages in turn): GEMMs, attention
    over `keys` positions (plus streaming their cached K/V from HBM), element-wise work, TP all-reduces
    and the engine's fixed GPU time per layer; the engine's host time per layer overlaps with all of it
    (kernel launches run ahead of the GPU), so the slower of the two sets the pace."""
    a_el, w_el, regime = serve_elements(s, gpu)
    peak = peak_flops(gpu, regime)
    L = m.num_hidden_layers
    f_moe = moe_fraction(m)

    def layer(moe: bool) -> float:
        shapes = layer_gemms(m, s, tokens, moe, experts)
        return sum(c * gemm_seconds(gpu, M, K, N, peak, a_el, w_el, cal) for M, K, N, c, _ in shapes)

    gemm = L * ((1 - f_moe) * layer(False) + (f_moe * layer(True) if f_moe else 0.0))
    gemm += gemm_seconds(gpu, logits_rows, m.hidden_size, m.vocab_size / s.tp, peak, a_el, 2, cal)
    attn_flops = tokens * flops.attention_flops_per_token(m, keys, causal) / s.tp
    attention = attn_flops / (peak_flops(gpu, "bf16") * attention_efficiency(m, gpu, cal))
    eng = cal.engines[engine]
    kv_read = tokens if causal else tokens * keys   # prefill reads its own K/V once; decode the cache
    kv = cal.gemm_traffic * eng.kv_traffic * kv_read * kv_bytes_per_token(m, s) * s.pp / hbm(gpu)
    el = (1 - f_moe) * elementwise_elements(m, s, False) + f_moe * elementwise_elements(m, s, True)
    elementwise = cal.elementwise_traffic * 2 * 2 * tokens * L * el / hbm(gpu)
    tp = (L * 2 * ring_seconds(tokens * m.hidden_size * 2, s.tp, 2, link_bandwidth(gpu, s.tp, 1, cal), cal))
    host = L * eng.host_seconds_per_layer[s.weight_format]
    fixed = L * eng.gpu_seconds_per_layer[s.weight_format]
    return max(host, fixed + gemm + attention + kv + elementwise + tp)


def prefill_seconds(m: ModelArch, gpu: GpuSpec, s: Strategy, prompt_tokens: float, engine: str = "vllm",
                    cal: Calibration | None = None) -> float:
    """Time to first token of one prompt on an idle replica (logits of the last position only)."""
    cal = cal or calibration()
    return forward_seconds(m, gpu, s, prompt_tokens, prompt_tokens, True, 1, engine, cal)


def decode_step_seconds(m: ModelArch, gpu: GpuSpec, s: Strategy, batch: float, kv_tokens: float,
                        engine: str = "vllm", cal: Calibration | None = None) -> float:
    """One decode step of `batch` sequences with `kv_tokens` cached tokens each. MoE: the experts that
    batch*k uniform routings touch, E*(1-(1-k/E)^batch), are read, each by its share of the tokens."""
    cal = cal or calibration()
    experts = None
    if m.is_moe:
        E, k = m.num_experts, m.num_experts_per_tok
        touched = E * (1 - (1 - k / E) ** batch)
        experts = (touched / s.ep, batch * k / touched)
    return forward_seconds(m, gpu, s, batch, kv_tokens, False, batch, engine, cal, experts)


def serving_throughput(m: ModelArch, gpu: GpuSpec, s: Strategy, engine: str = "vllm",
                       cal: Calibration | None = None) -> Throughput:
    cal = cal or calibration()
    ttft = prefill_seconds(m, gpu, s, s.context, engine, cal)
    tpot = decode_step_seconds(m, gpu, s, s.concurrency, s.context, engine, cal)
    replicas = s.num_gpus // (s.tp * s.pp)
    notes = [f"TTFT: one {s.context}-token prompt on an idle replica; TPOT: {s.concurrency} sequences "
             f"each holding {s.context} tokens of KV cache; tokens/s = replicas x concurrency / TPOT "
             "(decode only: prefill of new requests is not included)"]
    return Throughput(tokens_per_s=replicas * s.concurrency / tpot, ttft_seconds=ttft, tpot_seconds=tpot,
                      notes=notes)


def estimate_throughput(m: ModelArch, gpu: GpuSpec, s: Strategy, engine: str = "vllm") -> Throughput:
    """Tokens/s and the time parts of one configuration (engine applies to serve only)."""
    if s.workload == "serve":
        return serving_throughput(m, gpu, s, engine)
    return training_throughput(m, gpu, s)

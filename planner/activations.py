"""Activation memory: the tensors autograd saves, counted per token and per decoder layer.

The count follows the transformers implementation of Qwen3/Llama layers (modeling_qwen3.py,
modeling_qwen3_moe.py) tensor by tensor, the way Korthikanti et al. 2022 §4.1 count a GPT layer
(reference/formulas.md §1.2.1, §1.2.3). Each saved tensor is listed with the condition under which
autograd keeps it: a linear layer keeps its input only when its weight is trained, an element-wise
product keeps an operand only when the other side needs a gradient, and a storage shared by
several consumers is counted once. Units: bytes per token of one micro-batch, before TP division.
"""

from __future__ import annotations

from dataclasses import dataclass

from catalog.schema import ModelArch
from planner.strategy import Strategy

FP32 = 4
FUSED_CHUNKS = 8  # torchtune CEWithChunkedOutputLoss default num_output_chunks


@dataclass(frozen=True)
class Dtypes:
    """Element sizes of one training regime."""

    act: int          # hidden states, linear outputs (bf16: 2, fp32: 4)
    linear_in: float  # saved inputs of trained linear layers (fp8-mixed keeps them in fp8)
    adapter: int      # LoRA adapter dtype (PEFT upcasts adapters to fp32 under a bf16 base by default)
    logits: int       # dtype of the lm_head output


def dtypes(s: Strategy) -> Dtypes:
    if s.precision == "fp32":
        return Dtypes(act=4, linear_in=4, adapter=4, logits=4)
    adapter = 2 if s.precision == "bf16" else 4
    linear_in = 1 if s.precision == "fp8-mixed" else 2
    return Dtypes(act=2, linear_in=linear_in, adapter=adapter, logits=2)


def layer_items(m: ModelArch, s: Strategy, moe: bool) -> dict[str, float]:
    """Saved bytes per token of one decoder layer, by tensor, without checkpointing."""
    d = dtypes(s)
    h, q, g, f = m.hidden_size, m.q_width, m.kv_width, m.intermediate_size
    full = not s.is_peft                      # are the base weights trained?
    amp = s.precision == "amp"
    targets = set(s.lora_targets) if s.is_peft else set()
    items: dict[str, float] = {}

    def linear_inputs(name: str, width: int, modules: tuple[str, ...]):
        """Input saved for the weight gradient of `modules`, all fed by one tensor of `width`."""
        if full:
            # amp: autocast casts the fp32 input to bf16 separately for each linear layer
            copies = len(modules) if amp else 1
            items[name] = copies * d.linear_in * width
            return
        hit = [mod for mod in modules if mod in targets]
        if not hit:
            return
        if d.adapter != d.act:
            # PEFT casts the input to the adapter dtype once per adapted module (a new fp32 tensor each)
            items[name] = len(hit) * d.adapter * width
        else:
            items[name] = d.act * width       # lora_A saves the very tensor the base layer got
        items[name + "_lora_mid"] = len(hit) * d.adapter * s.lora_rank

    def rms_norm(name: str, width: int, heads: int = 1):
        # Qwen3RMSNorm: x.to(fp32) is saved by pow and mul; weight * x.to(in_dtype) keeps the
        # normalized tensor when the norm weight is trained (a fp32 input is upcast in place).
        items[name + "_fp32"] = FP32 * width
        if full:
            items[name + "_normed"] = (FP32 if amp else d.act) * width
        items[name + "_rsqrt"] = FP32 * heads

    rms_norm("input_norm", h)
    linear_inputs("qkv_in", h, ("q_proj", "k_proj", "v_proj"))
    if m.qk_norm:
        rms_norm("qk_norm", q + g, heads=m.num_attention_heads + m.num_key_value_heads)
    sdpa_el = 2  # attention kernels run in bf16 (under amp the inputs are cast to bf16)
    if s.precision == "fp32":
        sdpa_el = 4
    # attention saves q, k (after RoPE) and v; FlashAttention/SDPA handle GQA without repeating k, v
    items["attn_qkv"] = sdpa_el * (q + 2 * g)
    items["attn_out"] = sdpa_el * q
    items["attn_lse"] = FP32 * m.num_attention_heads
    if s.attention == "eager":
        # eager: k, v repeated to all heads, fp32 softmax output and its cast both saved, s x s per head
        items["attn_qkv"] = sdpa_el * 3 * q
        items["attn_scores"] = m.num_attention_heads * s.seq_len * (FP32 + sdpa_el)
        del items["attn_lse"]
    linear_inputs("o_in", q, ("o_proj",))
    rms_norm("post_norm", h)
    if moe:
        _moe_items(m, s, d, items, targets)
    else:
        linear_inputs("mlp_in", h, ("gate_proj", "up_proj") if m.gated_mlp else ("up_proj",))
        if m.gated_mlp:
            # gate (saved by SiLU), SiLU(gate) and up (saved by the product)
            items["mlp_act"] = 3 * d.act * f
        else:
            items["mlp_act"] = d.act * f        # GELU input
        linear_inputs("down_in", f, ("down_proj",))
    return items


def _moe_items(m: ModelArch, s: Strategy, d: Dtypes, items: dict, targets: set) -> None:
    """transformers Qwen3MoeSparseMoeBlock: router softmax, then a loop over the hit experts."""
    h, im, k, e = m.hidden_size, m.moe_intermediate_size, m.num_experts_per_tok, m.num_experts
    full = not s.is_peft
    if full:
        items["mlp_in"] = d.linear_in * h     # router input (the norm output)
    items["router"] = FP32 * e + 2 * FP32 * k  # softmax output, top-k weights and their normalization
    per_expert = d.act * 2 * im + d.act * im + d.act * h  # gate_up out, SiLU out, down out (x weight)
    if full:
        per_expert += d.linear_in * (h + im)    # gathered tokens and down_proj input
    items["experts"] = k * per_expert


def peft_expert_merge_bytes(m: ModelArch, s: Strategy) -> float:
    """Per MoE layer and micro-batch, independent of tokens: PEFT adapts transformers' fused 3-D
    expert tensors by materializing W + B@A for every expert and saving it for the backward."""
    if not (s.is_peft and m.is_moe):
        return 0.0
    h, im, e = m.hidden_size, m.moe_intermediate_size, m.num_experts
    fused = (2 * im * h if {"gate_proj", "up_proj"} & set(s.lora_targets) else 0) + \
        (im * h if "down_proj" in s.lora_targets else 0)
    return e * fused * dtypes(s).act


def layer_bytes_per_token(m: ModelArch, s: Strategy, moe: bool) -> float:
    return sum(layer_items(m, s, moe).values())


def checkpoint_bytes_per_token(m: ModelArch, s: Strategy) -> float:
    """Full checkpointing keeps only each layer's input (non-reentrant torch.utils.checkpoint)."""
    return dtypes(s).act * m.hidden_size if s.precision != "amp" else FP32 * m.hidden_size


def selective_bytes_per_token(m: ModelArch, s: Strategy, moe: bool) -> float:
    """Selective recompute (Korthikanti §5, torchtitan op-level SAC): keep matmul inputs and the
    attention output, recompute norms, RoPE and the activation function."""
    keep = ("qkv_in", "o_in", "mlp_in", "down_in", "attn_qkv", "attn_out", "attn_lse", "experts", "router")
    items = layer_items(m, s, moe)
    kept = sum(v for k, v in items.items() if k.startswith(keep) or k.endswith("_lora_mid"))
    return kept + checkpoint_bytes_per_token(m, s)


def head_items(m: ModelArch, s: Strategy) -> dict[str, float]:
    """Final norm and lm_head input, per token (last pipeline stage)."""
    d = dtypes(s)
    h = m.hidden_size
    items = {"final_norm_fp32": FP32 * h}
    if not s.is_peft:
        items["final_norm_normed"] = d.act * h
        items["lm_head_in"] = d.linear_in * h
    return items


def loss_bytes_per_token(m: ModelArch, s: Strategy) -> tuple[float, float]:
    """(forward peak, backward peak) of logits and cross-entropy buffers, per token.

    Unfused (transformers ForCausalLMLoss): lm_head output in the activation dtype, upcast to fp32,
    log-softmax output saved in fp32; the backward holds the saved log-softmax, the gradient of the
    loss w.r.t. it and the gradient w.r.t. the logits, all fp32 (reference/formulas.md §1.2.4).
    Fused/chunked (torchtune CEWithChunkedOutputLoss, Liger): one of FUSED_CHUNKS is alive at a time.
    """
    v = m.vocab_size
    d = dtypes(s)
    upcast = 0 if d.logits == FP32 else FP32           # .float() is a no-op on fp32 logits
    forward = v * (d.logits + upcast + FP32)
    backward = v * (FP32 + FP32 + FP32)
    if s.loss == "fused":
        return forward / FUSED_CHUNKS, backward / FUSED_CHUNKS
    return forward, backward


def head_grad_partials(s: Strategy) -> tuple[int, int, int]:
    """Buffers the size of the lm_head weight gradient that meet while its contributions add up.

    Returns (k_during, k_sum, k_tied): alive during one loss chunk's backward beside that chunk's
    buffers; alive at the summation of two contributions; and, for tied embeddings, alive beyond the
    finished gradients when the embedding's contribution arrives at the end of the backward.
    Autograd adds a contribution out of place (accumulated + new + sum: 3; 2 beyond the gradient
    itself). With fp32 main grads a hook drains each contribution into the fp32 buffer (partial +
    its fp32 copy: 3). Measured by planner/trace.py on chunked losses and tied embeddings.
    """
    if s.precision in ("bf16-mixed", "fp8-mixed"):
        return 1, 3, 3
    return 2, 3, 2


def autocast_weight_cache_bytes(s: Strategy) -> int:
    """torch.autocast caches a bf16 copy of each fp32 weight used in a matmul until the backward of
    that layer has run: 2 bytes per matmul weight under amp, nothing otherwise."""
    return 2 if s.precision == "amp" else 0

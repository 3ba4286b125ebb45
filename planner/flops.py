"""FLOPs per token of training, prefill and decode (reference/formulas.md §2.1, §2.4).

Units: FLOPs per token of the whole model (before any TP/PP/EP split). One multiply-add = 2 FLOPs.

Matrix multiplies: a weight of N parameters costs 2N per token forward, 2N for the input gradient
(dgrad) and 2N for the weight gradient (wgrad): 6N for training (Kaplan §2.1, PaLM appendix B).
N is `matmul_active` of planner/params.py: attention and MLP matrices, the router, the top-k experts a
token is routed to (Megatron `num_floating_point_operations`: topk experts), and the lm_head (logits);
the embedding lookup is not a matmul.

Attention core (QK^T and PV), per token and layer, with q = heads*head_dim and s keys:
  forward, non-causal   4*q*s   (PaLM: 12*L*H*Q*T for fwd+bwd = 3 x forward)
  forward, causal       2*q*s   (each query sees s/2 keys on average)
Model FLOPs (MFU) follow PaLM/nanoGPT/torchtitan/llm-foundry: NON-causal, no recomputation.
Hardware FLOPs (time) count what a FlashAttention kernel executes: causal, and its backward has 5
matmuls instead of 4 (it recomputes QK^T: torchtitan's note "flash attention does 1 more matmul").
"""

from __future__ import annotations

from catalog.schema import ModelArch
from planner.params import count_params, lora_params
from planner.strategy import Strategy

ATTN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def matmul_params(m: ModelArch) -> int:
    """Weights in matrix multiplies for one token (top-k experts, lm_head included)."""
    return count_params(m).matmul_active


def lora_active_params(m: ModelArch, s: Strategy) -> float:
    """Adapter parameters one token passes through: r*(d_in+d_out) per adapted matrix (Hu et al. §4.1);
    in MoE layers only the k routed experts' adapters."""
    attn = lora_params(m, s.lora_rank, tuple(t for t in s.lora_targets if t in ATTN_TARGETS))
    mlp = lora_params(m, s.lora_rank, tuple(t for t in s.lora_targets if t not in ATTN_TARGETS))
    if m.is_moe:
        mlp *= m.num_experts_per_tok / m.num_experts
    return attn + mlp


def attention_flops_per_token(m: ModelArch, keys: float, causal: bool) -> float:
    """Forward QK^T + PV FLOPs per token over all layers, attending to `keys` positions."""
    return (2 if causal else 4) * m.num_hidden_layers * m.q_width * keys


def recompute_passes(s: Strategy) -> float:
    """Extra forward passes of the decoder layers per step: full checkpointing recomputes the whole
    forward (Narayanan et al. 2021 appendix: 4 passes instead of 3); selective recomputation (as
    planner/memory.py keeps every matmul input) recomputes only element-wise ops, no matmul."""
    return 1.0 if s.checkpointing == "full" else 0.0


def training_flops_per_token(m: ModelArch, s: Strategy) -> float:
    """Model FLOPs per trained token (the MFU numerator), PaLM appendix B convention.

    full/pretrain: 6*N + 12*L*q*s (non-causal attention), i.e. nanoGPT's 6N + 12LHQT.
    lora/qlora: the frozen base gets no weight gradient: 4*N (forward + dgrad) + 6*N_adapter, plus
    the same attention term (its backward needs only activation gradients).
    """
    n = matmul_params(m)
    dense = 4 * n + 6 * lora_active_params(m, s) if s.is_peft else 6 * n
    return dense + 3 * attention_flops_per_token(m, s.seq_len, causal=False)


def dense_hardware_flops_per_token(m: ModelArch, s: Strategy) -> float:
    """Matmul FLOPs executed per trained token: forward + dgrad (+ wgrad of trained weights) +
    adapters, plus the recomputed forward of the decoder layers (the lm_head is not recomputed)."""
    pc = count_params(m)
    adapter = lora_active_params(m, s) if s.is_peft else 0.0
    grads = 4 if s.is_peft else 6
    layers = pc.matmul_active - pc.lm_head_matmul
    return grads * pc.matmul_active + 6 * adapter + recompute_passes(s) * 2 * (layers + adapter)


def attention_hardware_flops_per_token(m: ModelArch, s: Strategy) -> float:
    """Attention-core FLOPs executed per trained token: FlashAttention is causal with forward 1 and
    backward 2.5 forward-units (5 matmuls vs 2), plus the recomputed forward; eager attention computes
    the full s x s scores (non-causal) with a plain 2x backward."""
    flash = s.attention == "flash"
    fwd = attention_flops_per_token(m, s.seq_len, causal=flash)
    return fwd * ((3.5 if flash else 3.0) + recompute_passes(s))


def hardware_flops_per_token(m: ModelArch, s: Strategy) -> float:
    """FLOPs the GPUs execute per trained token (the HFU numerator).

    QLoRA dequantisation and amp weight casts are element-wise, not tensor-core FLOPs: planner/speed.py
    times them as memory traffic (`weight_prep_seconds`)."""
    return dense_hardware_flops_per_token(m, s) + attention_hardware_flops_per_token(m, s)


def prefill_flops_per_token(m: ModelArch, context: int) -> float:
    """Forward FLOPs per prompt token of a `context`-token prompt: 2N + causal attention 2*L*q*context
    (formulas.md §2.4: the forward third of PaLM's 12LHQT, halved by the causal mask)."""
    return 2 * matmul_params(m) + attention_flops_per_token(m, context, causal=True)


def decode_flops_per_token(m: ModelArch, kv_tokens: int) -> float:
    """Forward FLOPs of one generated token attending to `kv_tokens` cached positions: 2N + 4*L*q*kv."""
    return 2 * matmul_params(m) + attention_flops_per_token(m, kv_tokens, causal=False)

"""Exact parameter counts from the architecture (reference/qwen3.md §4-§5).

Per layer: attention q/k/v/o (+ q/k bias for Qwen2, + per-head q/k RMSNorm for Qwen3), two norms,
and either a dense MLP (SwiGLU: 3 matrices; plain GELU: 2) or a router plus E experts.
Model: embedding V*H, lm_head V*H unless tied, final norm H.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from catalog.schema import ModelArch


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts by role. `linear_*` are the matrices that LoRA and quantization act on."""

    embedding: int          # input embedding V*H
    lm_head: int            # output projection V*H (0 if tied)
    final_norm: int
    attn_linear: int        # all layers: q,k,v,o weights
    attn_other: int         # all layers: q/k biases, q/k norms
    norms: int              # all layers: the two per-layer norms
    dense_mlp: int          # all layers: dense MLP matrices
    router: int             # all layers: MoE router weights
    experts: int            # all layers: all expert matrices
    experts_active: int     # all layers: the top-k experts one token uses
    moe_layers: int
    layers: int

    @property
    def total(self) -> int:
        return (self.embedding + self.lm_head + self.final_norm + self.attn_linear + self.attn_other
                + self.norms + self.dense_mlp + self.router + self.experts)

    @property
    def active(self) -> int:
        """Parameters one token touches (Qwen card convention: embedding and head included)."""
        return self.total - self.experts + self.experts_active

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding - self.lm_head

    @property
    def per_layer_dense(self) -> int:
        """Average non-expert parameters of one decoder layer (attention, norms, dense MLP, router)."""
        return (self.attn_linear + self.attn_other + self.norms + self.dense_mlp + self.router) // self.layers

    @property
    def matmul_active(self) -> int:
        """Weights in matrix multiplies for one token (excludes the embedding lookup and norms)."""
        return self.lm_head_matmul + self.attn_linear + self.dense_mlp + self.router + self.experts_active

    @property
    def lm_head_matmul(self) -> int:
        # a tied model still multiplies by the (shared) V*H matrix for the logits
        return self.lm_head or self.embedding


def attention_linear_shapes(m: ModelArch) -> dict[str, tuple[int, int]]:
    """(in, out) of each attention projection."""
    h = m.hidden_size
    return {"q_proj": (h, m.q_width), "k_proj": (h, m.kv_width), "v_proj": (h, m.kv_width),
            "o_proj": (m.q_width, h)}


def mlp_linear_shapes(m: ModelArch, width: int) -> dict[str, tuple[int, int]]:
    h = m.hidden_size
    if m.gated_mlp:
        return {"gate_proj": (h, width), "up_proj": (h, width), "down_proj": (width, h)}
    return {"up_proj": (h, width), "down_proj": (width, h)}


@lru_cache(maxsize=256)
def count_params(m: ModelArch) -> ParamCounts:
    h, L = m.hidden_size, m.num_hidden_layers
    attn = sum(i * o for i, o in attention_linear_shapes(m).values())
    attn_other = (m.q_width + 2 * m.kv_width if m.qkv_bias else 0) + (2 * m.head_dim if m.qk_norm else 0)
    norm_params = h * (2 if m.norm_has_bias else 1)
    moe_layers = sum(m.is_moe_layer(i) for i in range(L))
    dense_layers = L - moe_layers
    dense_mlp = sum(i * o for i, o in mlp_linear_shapes(m, m.intermediate_size).values())
    expert = sum(i * o for i, o in mlp_linear_shapes(m, m.moe_intermediate_size).values()) if m.is_moe else 0
    return ParamCounts(
        embedding=m.vocab_size * h,
        lm_head=0 if m.tie_word_embeddings else m.vocab_size * h,
        final_norm=norm_params,
        attn_linear=L * attn,
        attn_other=L * attn_other,
        norms=L * 2 * norm_params,
        dense_mlp=dense_layers * dense_mlp,
        router=moe_layers * h * m.num_experts,
        experts=moe_layers * m.num_experts * expert,
        experts_active=moe_layers * m.num_experts_per_tok * expert,
        moe_layers=moe_layers,
        layers=L,
    )


def lora_params_per_layer(m: ModelArch, rank: int, targets: tuple[str, ...], layer: int = 0) -> int:
    """LoRA adapter parameters r*(d_in + d_out) per adapted matrix (Hu et al. 2021 §4.1).

    In MoE layers PEFT adapts every expert's projections separately (each is an nn.Linear).
    """
    shapes = dict(attention_linear_shapes(m))
    n = sum(rank * (i + o) for name, (i, o) in shapes.items() if name in targets)
    if m.is_moe_layer(layer):
        h, im = m.hidden_size, m.moe_intermediate_size
        # transformers fuses each expert's gate and up into one gate_up_proj [2*Im, h]; PEFT adapts it
        # at rank 2r when both are targeted: A [2r, h], B [2*Im, 2r]
        if "gate_proj" in targets and "up_proj" in targets:
            per_expert = 2 * rank * (h + 2 * im)
        else:
            per_expert = sum(rank * (h + im) for name in ("gate_proj", "up_proj") if name in targets)
        per_expert += rank * (im + h) if "down_proj" in targets else 0
        n += m.num_experts * per_expert
    else:
        n += sum(rank * (i + o) for name, (i, o) in mlp_linear_shapes(m, m.intermediate_size).items()
                 if name in targets)
    return n


@lru_cache(maxsize=1024)
def lora_params(m: ModelArch, rank: int, targets: tuple[str, ...]) -> int:
    return sum(lora_params_per_layer(m, rank, targets, i) for i in range(m.num_hidden_layers))

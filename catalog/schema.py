"""Typed schemas of the catalog data (models, GPUs, prices). Units are in the field names."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt


class Sourced(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str = Field(..., min_length=3, description="where the number comes from")


class Price(Sourced):
    usd: PositiveFloat
    date: str = Field(..., description="when the price was observed, YYYY-MM or YYYY-MM-DD")


class ModelArch(BaseModel):
    """A decoder-only transformer, as exact as a Hugging Face config.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    aliases: tuple[str, ...] = ()
    family: Literal["qwen3", "qwen3_moe", "qwen2", "llama", "mistral", "mpt"] = "qwen3"
    hidden_size: PositiveInt
    num_hidden_layers: PositiveInt
    num_attention_heads: PositiveInt
    num_key_value_heads: PositiveInt
    head_dim: PositiveInt
    intermediate_size: PositiveInt = Field(..., description="dense MLP width (unused in all-MoE models)")
    vocab_size: PositiveInt
    tie_word_embeddings: bool = False
    qk_norm: bool = Field(False, description="per-head RMSNorm on q and k (Qwen3)")
    qkv_bias: bool = Field(False, description="bias on q, k, v projections (Qwen2)")
    gated_mlp: bool = Field(True, description="SwiGLU (3 matrices) vs plain GELU MLP (2 matrices, MPT)")
    norm_has_bias: bool = Field(False, description="LayerNorm with bias (MPT uses no-bias LayerNorm)")
    num_experts: NonNegativeInt = 0
    num_experts_per_tok: NonNegativeInt = 0
    moe_intermediate_size: NonNegativeInt = 0
    decoder_sparse_step: PositiveInt = 1
    mlp_only_layers: tuple[int, ...] = ()
    max_position_embeddings: PositiveInt = 32768
    source: str = Field(..., min_length=3)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def is_moe_layer(self, layer: int) -> bool:
        # transformers Qwen3MoeDecoderLayer: sparse iff not in mlp_only_layers and (i+1) % step == 0
        return (self.is_moe and layer not in self.mlp_only_layers
                and (layer + 1) % self.decoder_sparse_step == 0)

    @property
    def q_width(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_key_value_heads * self.head_dim


class GpuSpec(BaseModel):
    """One accelerator. Rates are dense (no sparsity); bandwidths are per GPU, per direction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    aliases: tuple[str, ...] = ()
    display: str
    memory_bytes: PositiveInt = Field(..., description="memory that software can allocate (torch total_memory)")
    memory_source: str
    bf16_tflops: Optional[PositiveFloat] = Field(None, description="dense BF16 tensor TFLOP/s; None if unsupported")
    fp16_tflops: PositiveFloat = Field(..., description="dense FP16 tensor TFLOP/s (FP32 accumulate)")
    fp8_tflops: Optional[PositiveFloat] = None
    int8_tops: Optional[PositiveFloat] = None
    fp32_tflops: PositiveFloat = Field(..., description="dense FP32 (or TF32 tensor) TFLOP/s used for fp32 math")
    hbm_gbps: PositiveFloat = Field(..., description="memory bandwidth, GB/s (1e9)")
    intra_node_gbps: PositiveFloat = Field(..., description="GPU-to-GPU bandwidth inside a node, GB/s per direction")
    inter_node_gbps: PositiveFloat = Field(..., description="network bandwidth per GPU across nodes, GB/s per direction")
    host_gbps: PositiveFloat = Field(..., description="PCIe bandwidth GPU<->CPU, GB/s per direction")
    gpus_per_node: PositiveInt
    spec_source: str
    interconnect_source: str
    price_hourly: Price
    price_purchase: Price
    vendor: Literal["nvidia", "amd"] = "nvidia"


class PriceOverride(BaseModel):
    """A user's own prices for a catalog GPU (e.g. a negotiated rate)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    price_hourly: Optional[Price] = None
    price_purchase: Optional[Price] = None


class CatalogFile(BaseModel):
    """What a catalog TOML file may hold; every section is optional so users can add or override."""

    model_config = ConfigDict(extra="forbid")
    model: list[ModelArch] = []
    gpu: list[GpuSpec] = []
    price: list[PriceOverride] = []

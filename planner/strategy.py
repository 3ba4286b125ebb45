"""The strategy: every choice that determines memory, speed and cost of one configuration.

`estimate` evaluates one Strategy; the CP-SAT planner searches over the same fields.
Defaults are the ones documented in the README (`gpuplan estimate --help`).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, computed_field, model_validator

Workload = Literal["pretrain", "full", "lora", "qlora", "serve"]
# fp32: everything fp32. bf16: pure bf16 (weights, grads, optimizer states).
# bf16-mixed: bf16 weights/grads/activations + fp32 master weights and states (DeepSpeed, Megatron, FSDP).
# amp: fp32 weights under torch.autocast (bf16 matmuls, fp32 residual stream; transformers Trainer on fp32 model).
# fp8-mixed: as bf16-mixed, linear-layer inputs saved in fp8 (Transformer Engine).
Precision = Literal["fp32", "bf16", "bf16-mixed", "amp", "fp8-mixed"]
WeightFormat = Literal["bf16", "fp8", "int8", "int4", "nf4"]
Optimizer = Literal["adamw", "adamw-8bit", "sgd"]
Checkpointing = Literal["none", "selective", "full"]
Attention = Literal["flash", "eager"]
Loss = Literal["unfused", "fused"]
KvCacheFormat = Literal["bf16", "fp8"]

WORKLOADS: tuple[str, ...] = ("serve", "qlora", "lora", "full", "pretrain")
TRAINING_WORKLOADS = ("pretrain", "full", "lora", "qlora")
PEFT_WORKLOADS = ("lora", "qlora")
QUANTIZED_FORMATS = ("fp8", "int8", "int4", "nf4")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class StrategyError(ValueError):
    """A contradictory or impossible strategy; the message is one line for the user."""


class Strategy(BaseModel):
    """One fully specified configuration. Sizes are per micro-batch / per replica."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workload: Workload = Field("full", description="pretrain, full fine-tune, lora, qlora or serve")
    num_gpus: PositiveInt = Field(1, description="GPUs in the cluster (world size = tp*pp*dp); default tp*pp*ep")
    tp: PositiveInt = Field(1, description="tensor-parallel degree (with sequence parallel), inside a node")
    pp: PositiveInt = Field(1, description="pipeline-parallel stages (1F1B schedule)")
    ep: PositiveInt = Field(1, description="expert-parallel degree for MoE (carved out of dp)")
    zero: int = Field(0, ge=0, le=3, description="ZeRO / FSDP stage: 1 optimizer, 2 +grads, 3 +weights sharded over dp")
    precision: Precision = Field("bf16-mixed", description="training precision regime (serving uses bf16 compute)")
    weights: Optional[WeightFormat] = Field(
        None, description="storage of frozen or served weights; default bf16, nf4 for qlora")
    optimizer: Optimizer = "adamw"
    offload: bool = Field(False, description="optimizer states and master weights in CPU memory")
    checkpointing: Checkpointing = Field("none", description="activation (gradient) checkpointing")
    attention: Attention = Field("flash", description="flash/SDPA (no s^2 term) or eager")
    loss: Loss = Field("unfused", description="unfused: fp32 logits upcast (transformers default); fused: chunked")
    micro_batch: PositiveInt = Field(1, description="sequences per GPU per micro-step")
    seq_len: PositiveInt = Field(2048, description="training sequence length (packed)")
    grad_accum: PositiveInt = Field(1, description="micro-batches per optimizer step (pipeline m)")
    lora_rank: PositiveInt = 16
    lora_targets: tuple[str, ...] = ALL_LINEAR
    concurrency: PositiveInt = Field(16, description="serving: concurrent sequences per replica")
    context: PositiveInt = Field(4096, description="serving: tokens per sequence (prompt + output)")
    kv_cache: KvCacheFormat = "bf16"
    memory_utilization: float = Field(0.9, gt=0, le=1, description="serving engine cap on GPU memory")

    @computed_field(description="data-parallel degree = num_gpus / (tp * pp)")
    @property
    def dp(self) -> int:
        return self.num_gpus // (self.tp * self.pp)

    @property
    def weight_format(self) -> WeightFormat:
        if self.weights is not None:
            return self.weights
        return "nf4" if self.workload == "qlora" else "bf16"

    @property
    def is_training(self) -> bool:
        return self.workload in TRAINING_WORKLOADS

    @property
    def is_peft(self) -> bool:
        return self.workload in PEFT_WORKLOADS

    @model_validator(mode="before")
    @classmethod
    def _default_world(cls, data):
        # without --num-gpus, the smallest cluster the parallel degrees need (one data-parallel
        # replica, or ep replicas for expert parallelism)
        if isinstance(data, dict) and data.get("num_gpus") is None:
            degrees = [data.get(k, 1) for k in ("tp", "pp", "ep")]
            if all(isinstance(d, int) and d > 0 for d in degrees):
                data = {**data, "num_gpus": degrees[0] * degrees[1] * degrees[2]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "Strategy":
        if self.num_gpus % (self.tp * self.pp):
            raise StrategyError(
                f"--num-gpus {self.num_gpus} is not a multiple of tp*pp = {self.tp * self.pp}")
        if self.dp % self.ep:
            raise StrategyError(f"--ep {self.ep} must divide the data-parallel degree {self.dp}")
        fmt = self.weight_format
        if self.workload == "qlora" and fmt not in QUANTIZED_FORMATS:
            raise StrategyError(f"qlora needs quantized frozen weights (nf4, int4, int8, fp8), not --weights {fmt}")
        if self.workload in ("full", "pretrain") and fmt != "bf16":
            raise StrategyError(
                f"--weights {fmt} applies to frozen or served weights; {self.workload} trains every weight")
        if self.workload == "serve" and fmt == "nf4":
            pass  # bitsandbytes NF4 serving is allowed (transformers), slow but valid
        if self.workload == "lora" and fmt != "bf16":
            raise StrategyError(f"lora keeps the base in bf16; use --workload qlora for --weights {fmt}")
        if self.is_peft:
            unknown = [t for t in self.lora_targets if t not in ALL_LINEAR]
            if unknown or not self.lora_targets:
                raise StrategyError(
                    f"unknown --lora-targets {','.join(unknown) or '(empty)'}; choose from {','.join(ALL_LINEAR)}")
        if self.workload == "serve" and self.zero:
            raise StrategyError("--zero applies to training, not to serve")
        if self.offload and not self.is_training:
            raise StrategyError("--offload applies to training optimizer states, not to serve")
        if self.precision == "amp" and self.workload == "qlora":
            raise StrategyError("qlora keeps a quantized base; use --precision bf16 or bf16-mixed, not amp")
        return self


def check_against(model, gpu, s: Strategy) -> None:
    """Choices that contradict the model or the GPU; raises StrategyError with one line."""
    if s.offload and s.zero == 0:
        raise StrategyError("--offload needs --zero 1 or more (ZeRO-Offload keeps the optimizer partition on the CPU)")
    heads, kv = model.num_attention_heads, model.num_key_value_heads
    if heads % s.tp:
        raise StrategyError(f"--tp {s.tp} does not divide the {heads} attention heads of {model.name}")
    if kv % s.tp and s.tp % kv:
        raise StrategyError(f"--tp {s.tp} neither divides nor is a multiple of the {kv} KV heads of {model.name}")
    if s.pp > model.num_hidden_layers:
        raise StrategyError(f"--pp {s.pp} exceeds the {model.num_hidden_layers} layers of {model.name}")
    if s.ep > 1 and not model.is_moe:
        raise StrategyError(f"--ep {s.ep} needs a mixture-of-experts model; {model.name} is dense")
    if model.is_moe and model.num_experts % s.ep:
        raise StrategyError(f"--ep {s.ep} does not divide the {model.num_experts} experts of {model.name}")
    if gpu is not None and s.tp > gpu.gpus_per_node:
        raise StrategyError(f"--tp {s.tp} must stay inside one node ({gpu.gpus_per_node} x {gpu.name})")
    if gpu is not None and s.precision == "bf16" and s.is_training and gpu.bf16_tflops is None:
        raise StrategyError(f"{gpu.name} has no bf16 support; use --precision fp32 or amp")
    if gpu is not None and s.precision == "fp8-mixed" and s.is_training and gpu.fp8_tflops is None:
        raise StrategyError(f"{gpu.name} has no fp8 tensor cores; --precision fp8-mixed needs them")

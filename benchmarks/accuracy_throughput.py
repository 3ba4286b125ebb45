"""Throughput accuracy: predicted vs published for every throughput row of reference/calibration.md
(§2 torchtune, §3 Qwen3 inference, §7 AnswerDotAI, §12.2 NeMo AutoModel, §12.4 llm-foundry) and the
llm-foundry rows of reference/formulas.md §2.2, next to the common shortcut (6N FLOPs per trained token
at a fixed 40% MFU; 2N per generated token at 40% for serving).

Units: every row is compared as tokens/s in the unit the source publishes (cluster or per GPU); rows
published as a run time are converted (AnswerDotAI: 1024 samples x context / seconds, whole cluster).
Error = predicted / published - 1.

Flags per row: `specified` (the configuration the model needs is published; the calibration fit uses
only these rows) and `trusted` = specified and in a section calibration.md grades (§2 A-, §3 A, §7 A);
§12 and formulas.md §2.2 carry no grade.

`python benchmarks/accuracy_throughput.py` prints the table and the medians;
`python benchmarks/accuracy_throughput.py --fit` refits the constants of catalog/calibration.toml.
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catalog import default_catalog  # noqa: E402
from catalog.schema import GpuSpec, Price  # noqa: E402
from planner import speed  # noqa: E402
from planner.params import count_params  # noqa: E402
from planner.strategy import ALL_LINEAR, Strategy  # noqa: E402

SHORTCUT_MFU = 0.40
GENERATED = 2048  # Qwen3 speed benchmark: every run generates exactly 2048 tokens

# NVIDIA H20 is not in the catalog; spec as given for this benchmark (96 GB HBM3, 4.0 TB/s, 148 TFLOP/s
# BF16 dense). Benchmark-only: prices are placeholders and unused.
H20 = GpuSpec(
    name="h20", display="NVIDIA H20 96GB (benchmark-only spec)", memory_bytes=96 * 10**9,
    memory_source="NVIDIA H20 96 GB HBM3 (benchmark-only)", bf16_tflops=148, fp16_tflops=148, fp8_tflops=296,
    fp32_tflops=74, hbm_gbps=4000, intra_node_gbps=450, inter_node_gbps=50, host_gbps=64, gpus_per_node=8,
    spec_source="benchmark-only: 96 GB HBM3, 4.0 TB/s, 148 TFLOP/s BF16 dense (FP8 2x, TF32 half)",
    interconnect_source="benchmark-only: NVLink 900 GB/s bidirectional (unused, single GPU rows)",
    price_hourly=Price(usd=1.0, source="placeholder, unused", date="2025"),
    price_purchase=Price(usd=1.0, source="placeholder, unused", date="2025"))

# AnswerDotAI's 2x RTX 3090 rig: "an older motherboard and slow PCI lanes", no NVLink, 280 W power limit.
# The link speed is not published; assumption: the second card sits in a chipset PCIe 3.0 x4 slot
# (4 GB/s per direction), which matches the FSDP transfer times of its rows. Rows whose time depends on
# it (FSDP) are not `specified`.
RIG_3090 = default_catalog().gpu("rtx3090").model_copy(update=dict(
    name="rtx3090-rig", intra_node_gbps=4.0, host_gbps=4.0,
    interconnect_source="benchmark-only assumption: PCIe 3.0 x4 chipset slot (source: 'slow PCI lanes')"))

LORA_TT_QV = ("q_proj", "v_proj")
LORA_AA = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj")   # fsdp_qlora train.py
LORA_3B = ("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Row:
    id: str
    section: str
    model: str
    gpu: str | GpuSpec
    strategy: Strategy
    published: float          # tokens/s in `unit`
    unit: str                 # "cluster", "per GPU", or "generate" ((prompt + 2048) / time, one GPU)
    specified: bool = True    # every setting the model needs is published
    note: str = ""
    prompt: int = 0           # generate rows: prompt tokens
    engine: str = "vllm"      # generate rows: serving engine profile of catalog/calibration.toml


def S(**kw) -> Strategy:
    return Strategy(**kw)


def _torchtune() -> list[Row]:
    sec = "§2 torchtune"
    t = dict(precision="bf16", micro_batch=2, seq_len=2048, checkpointing="full")  # §2.1 stated conditions
    rows = [
        Row("TTN-01", sec, "Llama-3.1-8B", "rtx4090",
            S(workload="full", optimizer="adamw-8bit", loss="fused", **t), 1650, "cluster",
            note="bnb paged 8-bit AdamW (unified memory) modelled as an on-GPU 8-bit AdamW"),
        Row("TTN-03", sec, "Llama-3.1-8B", "rtx4090",
            S(workload="lora", lora_rank=8, lora_targets=LORA_TT_QV, loss="fused", **t), 3083, "cluster"),
        Row("TTN-05", sec, "Llama-3.1-8B", "rtx4090",
            S(workload="qlora", lora_rank=8, lora_targets=ALL_LINEAR, **t), 2413, "cluster"),
        Row("TTN-06", sec, "Llama-3.1-70B", "a100-80g-sxm",
            S(workload="full", num_gpus=8, zero=3, offload=True, loss="fused", **t), 1568, "cluster",
            note="fsdp_cpu_offload (params too) as ZeRO-Offload; cluster tokens/s (per GPU would be 2.8x peak)"),
        Row("TTN-07", sec, "Llama-3.1-70B", "a100-80g-sxm",
            S(workload="lora", num_gpus=8, zero=3, lora_rank=16, lora_targets=("q_proj", "k_proj", "v_proj"),
              loss="fused", **t), 3497, "cluster"),
        Row("TTN-08", sec, "Llama-3.1-405B", "a100-80g-sxm",
            S(workload="qlora", num_gpus=8, zero=3, lora_rank=16, lora_targets=ALL_LINEAR, **t), 653, "cluster",
            specified=False, note="micro-batch 2 in the table, 1 in the config (calibration.md §2.1)"),
    ]
    b = dict(precision="bf16", micro_batch=2, seq_len=4096)     # §2.2 Llama 3.2 3B on 1 x A100 80GB
    full = dict(workload="full", **b)
    rows += [
        Row("TTN-10", sec, "Llama-3.2-3B", "a100-80g-sxm", S(**full), 7075, "cluster",
            note="no torch.compile (eager element-wise ops); the model assumes compiled/fused kernels"),
        Row("TTN-11", sec, "Llama-3.2-3B", "a100-80g-sxm", S(**full), 8998, "cluster"),
        Row("TTN-12", sec, "Llama-3.2-3B", "a100-80g-sxm", S(loss="fused", **full), 9174, "cluster"),
        Row("TTN-13", sec, "Llama-3.2-3B", "a100-80g-sxm", S(loss="fused", checkpointing="full", **full),
            7210, "cluster"),
        Row("TTN-14", sec, "Llama-3.2-3B", "a100-80g-sxm", S(loss="fused", checkpointing="full", **full),
            7309, "cluster", note="optimizer step fused into backward (same work)"),
        Row("TTN-15", sec, "Llama-3.2-3B", "a100-80g-sxm", S(loss="fused", checkpointing="full", **full),
            7301, "cluster", note="activation offloading is hidden behind compute (not modelled)"),
        Row("TTN-16", sec, "Llama-3.2-3B", "a100-80g-sxm",
            S(loss="fused", checkpointing="full", optimizer="adamw-8bit", **full), 6960, "cluster"),
        Row("TTN-17", sec, "Llama-3.2-3B", "a100-80g-sxm",
            S(workload="lora", lora_rank=64, lora_targets=LORA_3B, loss="fused", checkpointing="full", **b),
            8210, "cluster"),
        Row("TTN-18", sec, "Llama-3.2-3B", "a100-80g-sxm",
            S(workload="qlora", lora_rank=64, lora_targets=LORA_3B, loss="fused", checkpointing="full", **b),
            8035, "cluster"),
    ]
    return rows


def _answerdotai() -> list[Row]:
    """Time for 1024 samples of `context` tokens (every sample is exactly the context) -> tokens/s."""
    sec = "§7 AnswerDotAI"
    rows = []

    def add(id_, model, gpu, workload, gpus, zero, mbs, seconds, ctx=2048, offload=False, specified=True, note=""):
        s = S(workload=workload, num_gpus=gpus, zero=zero, micro_batch=mbs, seq_len=ctx, offload=offload,
              precision="bf16", checkpointing="full", lora_rank=64, lora_targets=LORA_AA)
        rows.append(Row(id_, sec, model, gpu, s, 1024 * ctx / seconds, "cluster", specified, note))

    rig3090 = "2x3090 rig: 'older motherboard and slow PCI lanes', power-limited to 280 W"
    for id_, wl, z, mbs, t3090, t4090 in [
            ("AA-01", "qlora", 3, 1, 1082, None), ("AA-03", "lora", 3, 1, 2597, None),
            ("AA-05", "qlora", 3, 4, 998, None), ("AA-06", "qlora", 3, 10, 936, 466),
            ("AA-07", "lora", 3, 4, 1366, None), ("AA-08", "lora", 3, 6, 1199, 481),
            ("AA-09", "qlora", 0, 8, 875, 450), ("AA-10", "lora", 0, 4, 881, 437)]:
        add(id_ + ("a" if t4090 else ""), "Llama-2-7B", RIG_3090, wl, 2, z, mbs, t3090,
            ctx=512 if mbs == 1 else 2048, specified=z == 0, note=rig3090)
        if t4090:
            add(id_ + "b", "Llama-2-7B", "rtx4090", wl, 2, z, mbs, t4090)
    add("AA-02", "Llama-2-7B", RIG_3090, "qlora", 2, 3, 1, 1564, specified=False, note=rig3090)
    add("AA-04", "Llama-2-7B", RIG_3090, "lora", 2, 3, 1, 3090, specified=False, note=rig3090)
    cpu = "FSDP CPU offload of the frozen weights: their PCIe stream is not modelled"
    add("AA-11", "Llama-2-7B", "rtx4090", "lora", 2, 3, 10, 482, offload=True, note=cpu)
    add("AA-12", "Llama-2-7B", "rtx4090", "qlora", 2, 3, 12, 464, offload=True, note=cpu)
    add("AA-13a", "Yi-34B", RIG_3090, "qlora", 2, 3, 2, 5041, specified=False, note=rig3090)
    add("AA-13b", "Yi-34B", "rtx4090", "qlora", 2, 3, 2, 2072)
    add("AA-14a", "Yi-34B", RIG_3090, "qlora", 2, 3, 4, 4830, offload=True, specified=False, note=rig3090 + "; " + cpu)
    add("AA-14b", "Yi-34B", "rtx4090", "qlora", 2, 3, 4, 2061, offload=True, note=cpu)
    add("AA-15a", "Llama-2-70B", RIG_3090, "qlora", 2, 3, 2, 11795, offload=True, specified=False,
        note=rig3090 + "; " + cpu)
    add("AA-15b", "Llama-2-70B", "rtx4090", "qlora", 2, 3, 2, 4399, offload=True, note=cpu)
    add("AA-16", "Mistral-7B-v0.2", "rtx4090", "qlora", 2, 3, 12, 483, offload=True, note=cpu)
    add("AA-17", "Mistral-7B-v0.2", "rtx4090", "qlora", 2, 3, 1, 7809, ctx=24576, offload=True, note=cpu)
    cloud = "cloud rows: offload, accumulation and sharding details not published"
    for id_, gpu, n, mbs, secs in [("AA-70B-A100x2", "a100-40g-sxm", 2, 1, 3277),
                                   ("AA-70B-A100x4", "a100-40g-sxm", 4, 4, 1266),
                                   ("AA-70B-A100x8", "a100-40g-sxm", 8, 4, 672),
                                   ("AA-70B-H100x4", "h100-sxm", 4, 8, 667)]:
        add(id_, "Llama-2-70B", gpu, "qlora", n, 3, mbs, secs, specified=False, note=cloud)
    return rows


def _nemo() -> list[Row]:
    sec = "§12.2 NeMo AutoModel"
    lora = dict(workload="lora", lora_rank=16, lora_targets=ALL_LINEAR, precision="bf16", micro_batch=2,
                seq_len=4096)
    ac = dict(checkpointing="full", zero=3, tp=2)
    return [
        Row("NA-01", sec, "Llama-3.1-8B", "h100-sxm", S(grad_accum=16, **lora), 12472.87, "per GPU"),
        Row("NA-02", sec, "Qwen2.5-7B", "h100-sxm", S(grad_accum=16, **lora), 14110.05, "per GPU"),
        Row("NA-03", sec, "Llama-3.1-70B", "h100-sxm", S(num_gpus=8, grad_accum=4, **ac, **lora), 1091.85, "per GPU"),
        Row("NA-04", sec, "Qwen2.5-32B", "h100-sxm", S(num_gpus=8, grad_accum=4, **ac, **lora), 2250.31, "per GPU"),
        Row("NA-05", sec, "Llama-3.1-70B", "h100-sxm", S(num_gpus=16, grad_accum=2, **ac, **lora), 984.85, "per GPU"),
        Row("NA-06", sec, "Qwen2.5-32B", "h100-sxm", S(num_gpus=16, grad_accum=2, **ac, **lora), 2072.89, "per GPU"),
        Row("NA-07", sec, "Qwen3-30B-A3B", "h100-sxm",
            S(workload="pretrain", num_gpus=8, ep=8, zero=3, micro_batch=4, grad_accum=16, seq_len=4096,
              checkpointing="full"), 12040, "per GPU"),
        Row("NA-08", sec, "Llama-3.1-70B", "h100-sxm",
            S(workload="pretrain", num_gpus=64, zero=3, micro_batch=1, grad_accum=2, seq_len=8192,
              checkpointing="full"), 866.77, "per GPU",
            note="context parallel 2 expressed as data parallel (same FLOPs per token; CP's K/V exchange "
                 "not modelled)"),
    ]


def _foundry() -> list[Row]:
    """MPT (ALiBi, MHA, GELU x4 MLP) through catalog/reference_models.toml (gated_mlp = false). amp_bf16
    under FSDP mixed precision gathers bf16 weights and keeps fp32 masters: bf16-mixed."""
    rows = []
    for id_, sec, size, seq, gpus, gpu, mbs, ga, ac, tps, prec, zero in [
            ("MF-01", "§12.4", "70b", 2048, 64, "h100-sxm", 8, 4, True, 1039, "bf16-mixed", 3),
            ("MF-02", "§12.4", "70b", 2048, 32, "h100-sxm", 2, 16, True, 882, "bf16-mixed", 3),
            ("MF-03", "§12.4", "30b", 8192, 8, "h100-sxm", 1, 21, True, 1384, "bf16-mixed", 3),
            ("MF-04", "§12.4", "30b", 4096, 8, "h100-sxm", 1, 21, True, 1802, "bf16-mixed", 3),
            ("MF-05", "§12.4", "30b", 2048, 8, "h100-sxm", 3, 21, True, 2002, "bf16-mixed", 3),
            ("MF-06", "§12.4", "13b", 32768, 8, "h100-sxm", 1, 3, True, 1976, "bf16-mixed", 3),
            ("MF-07", "§12.4", "13b", 4096, 8, "h100-sxm", 10, 3, True, 4717, "bf16-mixed", 3),
            ("MF-08", "§12.4", "13b", 2048, 8, "h100-sxm", 2, 1, False, 4792, "bf16-mixed", 3),
            ("MF-09", "§12.4", "7b", 65536, 8, "h100-sxm", 1, 2, True, 1956, "bf16-mixed", 3),
            ("MF-10", "§12.4", "7b", 8192, 8, "h100-sxm", 8, 2, True, 6935, "bf16-mixed", 3),
            ("MF-11", "§12.4", "7b", 2048, 8, "h100-sxm", 6, 1, False, 10643, "bf16-mixed", 3),
            ("MF-12", "§12.4", "3b", 8192, 8, "h100-sxm", 3, 6, False, 16578, "bf16-mixed", 3),
            ("MF-13", "§12.4", "1b", 2048, 8, "h100-sxm", 14, 1, False, 45455, "bf16-mixed", 3),
            ("LF-01", "formulas §2.2", "70b", 2048, 512, "h100-sxm", 8, 1, True, 1007, "bf16-mixed", 3),
            ("LF-02", "formulas §2.2", "7b", 32768, 8, "h100-sxm", 2, 2, True, 3318, "bf16-mixed", 3),
            ("LF-03", "formulas §2.2", "3b", 2048, 512, "h100-sxm", 8, 1, False, 21664, "bf16-mixed", 2),
            ("LF-04", "formulas §2.2", "3b", 2048, 8, "h100-sxm", 10, 6, False, 30586, "fp8-mixed", 3),
            ("LF-05", "formulas §2.2", "1b", 512, 8, "h100-sxm", 56, 4, False, 70315, "fp8-mixed", 3),
            ("LF-06", "formulas §2.2", "70b", 2048, 64, "a100-80g-sxm", 8, 4, True, 410, "bf16", 3),
            ("LF-07", "formulas §2.2", "30b", 2048, 8, "a100-80g-sxm", 3, 21, True, 916, "bf16-mixed", 3),
            ("LF-08", "formulas §2.2", "13b", 2048, 8, "a100-80g-sxm", 2, 3, False, 2262, "bf16-mixed", 3),
            ("LF-09", "formulas §2.2", "7b", 2048, 8, "a100-80g-sxm", 6, 2, False, 4641, "bf16-mixed", 3),
            ("LF-10", "formulas §2.2", "7b", 8192, 8, "a100-80g-sxm", 8, 2, True, 3206, "bf16-mixed", 3),
            ("LF-11", "formulas §2.2", "70b", 2048, 128, "a100-40g-sxm", 4, 1, True, 376, "bf16", 3),
            ("LF-12", "formulas §2.2", "13b", 2048, 8, "a100-40g-sxm", 4, 16, True, 1668, "bf16", 3),
            ("LF-13", "formulas §2.2", "7b", 2048, 8, "a100-40g-sxm", 12, 4, True, 3679, "bf16", 3)]:
        s = S(workload="pretrain", num_gpus=gpus, zero=zero, micro_batch=mbs, grad_accum=ga, seq_len=seq,
              precision=prec, checkpointing="full" if ac else "none")
        rows.append(Row(id_, f"{sec} llm-foundry", f"MPT-{size}", gpu, s, tps, "per GPU"))
    return rows


def _qwen3_inference() -> list[Row]:
    """QwenLM/Qwen3 speed benchmark: HF transformers generate, batch 1, FA2, H20; speed =
    (prompt + 2048 generated tokens) / time. Qwen3-30B-A3B rows are excluded (see EXCLUDED)."""
    speeds = {  # model: {format: [speed at prompt 1, 6144, 14336, 30720]}, IDs in calibration.md order
        ("Qwen3-0.6B", 1): {"bf16": [58.57, 154.82, 168.48, 175.93], "fp8": [24.60, 73.96, 104.99, 132.78],
                            "int8": [26.56, 93.84, 219.61, 345.71]},
        ("Qwen3-4B", 25): {"bf16": [45.94, 159.95, 195.31, 217.97], "fp8": [17.33, 60.55, 96.81, 138.84],
                           "int4": [51.57, 183.04, 265.22, 481.69]},
        ("Qwen3-14B", 49): {"bf16": [40.66, 108.52, 136.36, 155.38], "fp8": [13.02, 44.86, 71.96, 102.63],
                            "int4": [44.67, 128.08, 220.62, 363.25]},
    }
    rows = []
    for (model, first), by_fmt in speeds.items():
        for p_i, prompt in enumerate((1, 6144, 14336, 30720)):
            for f_i, (fmt, values) in enumerate(by_fmt.items()):
                id_ = f"Q3I-{first + 3 * p_i + f_i:02d}"
                s = S(workload="serve", weights=fmt, concurrency=1, context=prompt + GENERATED)
                # GPTQ-Int8 and AWQ-INT4 checkpoints run through GPTQModel / AutoAWQ kernels and caches
                engine = "transformers" if fmt in ("bf16", "fp8") else "transformers-gptq-awq"
                rows.append(Row(id_, "§3 Qwen3 inference", model, H20, s, values[p_i], "generate", prompt=prompt,
                                engine=engine))
    return rows


EXCLUDED = {
    "TTN-02, TTN-04": "RTX A6000 rows: per-hardware settings not published (calibration.md §2.1 caveat) and "
                      "the GPU is not in the catalog",
    "TTN-09": "unpacked alpaca samples of unknown length (packing starts at TTN-10)",
    "AA (A5000, A6000 Ada rows)": "GPUs not in the catalog",
    "NA-09": "GPT-OSS-20B is not in the catalog (alternating 128-token sliding-window attention, attention sinks)",
    "Q3I-73..80": "Qwen3-30B-A3B under transformers ran a naive Python loop over experts (1.9-27 tok/s): "
                  "the kernel structure, not the hardware, sets the speed",
}


GRADED = {"§2 torchtune": "A-", "§3 Qwen3 inference": "A", "§7 AnswerDotAI": "A"}  # calibration.md trust


def all_rows() -> list[Row]:
    return _torchtune() + _answerdotai() + _nemo() + _foundry() + _qwen3_inference()


# --- predictions ---------------------------------------------------------------------------------------

def _gpu(row: Row) -> GpuSpec:
    return row.gpu if isinstance(row.gpu, GpuSpec) else default_catalog().gpu(row.gpu)


def predict(row: Row, cal: speed.Calibration | None = None) -> float:
    """Predicted tokens/s in the row's unit."""
    m, gpu, s = default_catalog().model(row.model), _gpu(row), row.strategy
    if row.unit == "generate":
        ttft = speed.prefill_seconds(m, gpu, s, row.prompt, row.engine, cal)
        # the decode step is affine in the cache length: evaluate it at the mean length
        tpot = speed.decode_step_seconds(m, gpu, s, 1, row.prompt + GENERATED / 2, row.engine, cal)
        return (row.prompt + GENERATED) / (ttft + GENERATED * tpot)
    tps = speed.training_throughput(m, gpu, s, cal).tokens_per_s
    return tps / s.num_gpus if row.unit == "per GPU" else tps


def shortcut(row: Row) -> float:
    """The common shortcut: 6N FLOPs per trained token (2N per generated token) at 40% of peak."""
    m, gpu, s = default_catalog().model(row.model), _gpu(row), row.strategy
    n = count_params(m).active
    regime = "fp8" if s.precision == "fp8-mixed" else "bf16"
    peak = speed.peak_flops(gpu, regime) * SHORTCUT_MFU
    if row.unit == "generate":
        return peak / (2 * n)
    tps = s.num_gpus * peak / (6 * n)
    return tps / s.num_gpus if row.unit == "per GPU" else tps


def throughput_rows(cal: speed.Calibration | None = None) -> list[dict]:
    out = []
    for r in all_rows():
        p, sc = predict(r, cal), shortcut(r)
        out.append(dict(id=r.id, section=r.section, model=r.model, gpu=_gpu(r).name, unit=r.unit,
                        specified=r.specified, trusted=r.specified and r.section in GRADED, note=r.note,
                        published=r.published, predicted=p,
                        error=p / r.published - 1, shortcut_prediction=sc, shortcut_error=sc / r.published - 1))
    return out


def median_abs(rows: list[dict], key: str = "error") -> float:
    return statistics.median(abs(r[key]) for r in rows)


# --- calibration fit -----------------------------------------------------------------------------------

def residual(row: Row, cal: speed.Calibration) -> float:
    """Fit residual: |log(predicted/published)|^2, so that least squares minimises the sum of 4th powers
    (the acceptance criterion bounds the worst row, so large errors weigh more than in plain least
    squares; the medians barely move)."""
    return math.log(predict(row, cal) / row.published) ** 2


def fit() -> None:
    """Sum of 4th powers of log(predicted/published) over the specified rows: the element-wise traffic and
    the two attention efficiencies on the training rows, for each overlap on a grid (the cost is flat in
    it wherever no communication is exposed); then each transformers engine profile (host and GPU time
    per layer by weight format, KV traffic) on its §3 rows."""
    import numpy as np
    from scipy.optimize import least_squares

    # GEMM constants: t = a/e + traffic*b through two published max-achievable-matmul points
    def terms(peak_tflops, hbm_gbps, mamf_tflops, m, n, k):
        flops = 2 * m * n * k
        traffic = 2 * (m * k + k * n + m * n)
        return flops / (peak_tflops * 1e12), traffic / (hbm_gbps * 1e9), flops / (mamf_tflops * 1e12)

    a100, h100 = terms(312, 2039, 267.9, 6912, 16384, 2048), terms(989, 3350, 792.1, 6144, 17920, 2816)
    inv_e, traffic = np.linalg.solve([a100[:2], h100[:2]], [a100[2], h100[2]])
    a, b, t = terms(1307.4, 5300, 781.9, 4096, 10240, 4864)
    print(f"gemm: max_efficiency nvidia {1 / inv_e:.3f}, amd {a / (t - traffic * b):.3f}, traffic {traffic:.3f}")

    base = speed.calibration()
    rows = [r for r in all_rows() if r.specified]
    train = [r for r in rows if r.unit != "generate"]
    gen = [r for r in rows if r.unit == "generate"]

    def training(x, overlap):
        return replace(base, elementwise_traffic=x[0], overlap=overlap,
                       attention_efficiency={"default": x[1], "hopper": x[2]})

    best = None
    for overlap in np.linspace(0, 1, 5):
        res = least_squares(lambda x: [residual(r, training(x, overlap)) for r in train],
                            x0=[2, 0.5, 0.3], bounds=([0.2, 0.05, 0.05], [20, 1, 1]))
        print(f"overlap {overlap:.2f}: cost {res.cost:.4f}, x {np.round(res.x, 4)}")
        if best is None or res.cost < best[0]:
            best = (res.cost, res.x, overlap)
    cal = training(best[1], best[2])
    print("training:", dict(elementwise_traffic=best[1][0], attention_efficiency=best[1][1:], overlap=best[2]))
    for engine, fmts in (("transformers", ("bf16", "fp8")), ("transformers-gptq-awq", ("int8", "int4"))):
        rows_e = [r for r in gen if r.engine == engine]
        eng = cal.engines[engine]
        n = len(fmts)

        def with_engine(x):
            e = speed.Engine({**eng.host_seconds_per_layer, **dict(zip(fmts, x[:n]))},
                             {**eng.gpu_seconds_per_layer, **dict(zip(fmts, x[n:2 * n]))}, x[-1])
            return replace(cal, engines={**cal.engines, engine: e})

        x0 = ([eng.host_seconds_per_layer[f] for f in fmts] + [eng.gpu_seconds_per_layer[f] for f in fmts]
              + [eng.kv_traffic])
        res = least_squares(lambda x: [residual(r, with_engine(x)) for r in rows_e],
                            x0=x0, bounds=([0] * (2 * n + 1), [0.05] * (2 * n) + [1000]))
        print(f"{engine}: host {np.round(res.x[:n], 6)}, gpu {np.round(res.x[n:2 * n], 6)}, "
              f"kv_traffic {res.x[-1]:.2f} ({fmts})")


# --- report ----------------------------------------------------------------------------------------------

def main() -> None:
    if "--fit" in sys.argv:
        fit()
        return
    rows = throughput_rows()
    print(f"{'id':15} {'section':22} {'model':16} {'gpu':13} {'unit':8} {'published':>10} {'predicted':>10} "
          f"{'error':>7} {'shortcut':>9} {'sc.err':>7}  note")
    for r in rows:
        flag = "" if r["specified"] else "(settings not published) "
        print(f"{r['id']:15} {r['section'][:22]:22} {r['model']:16} {r['gpu']:13} {r['unit']:8} "
              f"{r['published']:10.1f} {r['predicted']:10.1f} {r['error']:+7.1%} {r['shortcut_prediction']:9.1f} "
              f"{r['shortcut_error']:+7.1%}  {flag}{r['note']}")
    trusted = [r for r in rows if r["trusted"]]
    worst = max(trusted, key=lambda r: abs(r["error"]))
    other = [r for r in rows if r["specified"] and not r["trusted"]]
    worst_other = max(other, key=lambda r: abs(r["error"]))
    print(f"\n{len(rows)} rows. Median |error|: model {median_abs(rows):.1%}, shortcut "
          f"{median_abs(rows, 'shortcut_error'):.1%}.\nWorst row of the graded sections (§2, §3, §7; "
          f"{len(trusted)} rows): {worst['id']} {worst['error']:+.1%}. Worst specified row of the ungraded "
          f"sections ({len(other)} rows): {worst_other['id']} {worst_other['error']:+.1%}.")
    for section in sorted({r["section"] for r in rows}):
        sub = [r for r in rows if r["section"] == section]
        print(f"  {section:32} n={len(sub):3}  median |error| model {median_abs(sub):6.1%}  "
              f"shortcut {median_abs(sub, 'shortcut_error'):6.1%}")
    print("\nExcluded rows:")
    for ids, why in EXCLUDED.items():
        print(f"  {ids}: {why}")


if __name__ == "__main__":
    main()

"""Measured memory of reduced-layer Qwen3 models on a grid of strategies (planner.trace).

    python benchmarks/trace_grid.py            # self-test + the whole grid, ~25 s on 2 CPU cores
    python benchmarks/trace_grid.py lora       # only cases whose label contains "lora"

One line per case: peak MiB, the phase it falls in, the split at the peak (W weights,
G gradients, O optimizer, A activations, KV cache) and the peak of each phase (f forward,
b backward, o optimizer, p prefill), all in MiB. Needs the `trace` extra (torch,
transformers, peft); tensors are fake, so the shapes cost no compute.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager

from catalog import default_catalog
from planner.strategy import Strategy
from planner.trace import TraceUnsupported, _selftest, trace

MIB = 2**20
SHORT = {"weights": "W", "gradients": "G", "optimizer": "O", "activations": "A", "kv_cache": "KV"}

# (model, layers, label, strategy fields)
GRID: list[tuple[str, int, str, dict]] = [
    # per-layer activations: 4-layer minus 2-layer at the same shape
    ("qwen3-0.6b", 2, "full bf16 b1 s1024", dict(precision="bf16", seq_len=1024)),
    ("qwen3-0.6b", 4, "full bf16 b1 s1024", dict(precision="bf16", seq_len=1024)),
    ("qwen3-0.6b", 2, "full bf16 b1 s1024 eager", dict(precision="bf16", seq_len=1024, attention="eager")),
    ("qwen3-0.6b", 2, "full bf16 b1 s1024 fused", dict(precision="bf16", seq_len=1024, loss="fused")),
    ("qwen3-0.6b", 4, "full bf16 b1 s1024 fused", dict(precision="bf16", seq_len=1024, loss="fused")),
    ("qwen3-0.6b", 2, "full bf16 b1 s1024 ckpt", dict(precision="bf16", seq_len=1024, checkpointing="full")),
    ("qwen3-0.6b", 4, "full bf16 b1 s1024 ckpt", dict(precision="bf16", seq_len=1024, checkpointing="full")),
    # precision regimes at one shape
    ("qwen3-0.6b", 2, "full fp32 b1 s1024", dict(precision="fp32", seq_len=1024)),
    ("qwen3-0.6b", 2, "full amp b1 s1024", dict(precision="amp", seq_len=1024)),
    ("qwen3-0.6b", 2, "full bf16-mixed b1 s1024", dict(precision="bf16-mixed", seq_len=1024)),
    ("qwen3-0.6b", 2, "full bf16-mixed b1 s1024 sgd", dict(seq_len=1024, optimizer="sgd")),
    # batch and sequence
    ("qwen3-0.6b", 2, "full bf16-mixed b4 s256", dict(micro_batch=4, seq_len=256)),
    ("qwen3-0.6b", 2, "full bf16-mixed b2 s2048", dict(micro_batch=2, seq_len=2048)),
    ("qwen3-0.6b", 2, "full bf16-mixed b2 s2048 fused ckpt",
     dict(micro_batch=2, seq_len=2048, loss="fused", checkpointing="full")),
    ("qwen3-0.6b", 2, "full bf16 b1 s1024 accum2", dict(precision="bf16", seq_len=1024, grad_accum=2)),
    ("qwen3-0.6b", 2, "full bf16-mixed b1 s1024 accum2", dict(seq_len=1024, grad_accum=2)),
    # LoRA / QLoRA
    ("qwen3-0.6b", 2, "lora r16 bf16-mixed b1 s1024", dict(workload="lora", seq_len=1024)),
    ("qwen3-0.6b", 4, "lora r16 bf16-mixed b1 s1024", dict(workload="lora", seq_len=1024)),
    ("qwen3-0.6b", 2, "lora r16 bf16 b1 s1024", dict(workload="lora", precision="bf16", seq_len=1024)),
    ("qwen3-0.6b", 2, "lora r16 bf16-mixed b4 s1024 ckpt fused",
     dict(workload="lora", micro_batch=4, seq_len=1024, checkpointing="full", loss="fused")),
    ("qwen3-0.6b", 2, "qlora r16 bf16-mixed b1 s1024", dict(workload="qlora", seq_len=1024)),
    # bigger layers: Qwen3-8B and the Qwen3-30B-A3B MoE
    ("qwen3-8b", 2, "full bf16-mixed b1 s2048", dict(seq_len=2048)),
    ("qwen3-8b", 2, "full bf16-mixed b1 s2048 ckpt fused",
     dict(seq_len=2048, checkpointing="full", loss="fused")),
    ("qwen3-8b", 2, "lora r16 bf16-mixed b2 s2048", dict(workload="lora", micro_batch=2, seq_len=2048)),
    ("qwen3-8b", 2, "qlora r16 bf16-mixed b1 s2048 ckpt",
     dict(workload="qlora", seq_len=2048, checkpointing="full")),
    ("qwen3-30b-a3b", 2, "full bf16-mixed b1 s1024", dict(seq_len=1024)),
    ("qwen3-30b-a3b", 2, "lora r16 bf16-mixed b1 s1024", dict(workload="lora", seq_len=1024)),
    # serving: one prefill
    ("qwen3-0.6b", 2, "serve c16 ctx2048", dict(workload="serve", concurrency=16, context=2048)),
    ("qwen3-0.6b", 4, "serve c16 ctx2048", dict(workload="serve", concurrency=16, context=2048)),
    ("qwen3-8b", 2, "serve c8 ctx4096", dict(workload="serve", concurrency=8, context=4096)),
    ("qwen3-30b-a3b", 2, "serve c8 ctx4096", dict(workload="serve", concurrency=8, context=4096)),
    # what the trace refuses
    ("qwen3-0.6b", 2, "zero3 x8", dict(num_gpus=8, zero=3)),
    ("qwen3-0.6b", 2, "fp8-mixed", dict(precision="fp8-mixed")),
    ("qwen3-0.6b", 2, "selective ckpt", dict(checkpointing="selective")),
    ("qwen3-0.6b", 2, "adamw-8bit", dict(optimizer="adamw-8bit")),
]


@contextmanager
def _quiet_stderr():
    """Silence file descriptor 2: the profiler the self-test uses logs there from C++."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main(pattern: str = "") -> None:
    warnings.filterwarnings("ignore")  # transformers/PEFT deprecation notices, not results
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with _quiet_stderr():
        _selftest()
    print("self-test passed: Linear + AdamW by hand = fake = MemTracker; tiny Qwen3 trace = real CPU allocator")
    catalog = default_catalog()
    start = time.perf_counter()
    for model, layers, label, fields in GRID:
        if pattern not in label:
            continue
        name = f"{model} L{layers} {label}"
        try:
            r = trace(catalog.model(model), Strategy(**fields), num_layers=layers)
        except TraceUnsupported as e:
            print(f"{name:52s} unsupported: {e}")
            continue
        split = " ".join(f"{SHORT[k]} {v / MIB:7.1f}" for k, v in r.by_category.items() if v or k != "kv_cache")
        phases = " ".join(f"{p[0]} {v / MIB:7.1f}" for p, v in r.phase_peaks.items())
        print(f"{name:52s} {r.peak_bytes / MIB:8.1f} MiB {r.peak_phase:9s} {split} | {phases}")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(*sys.argv[1:])

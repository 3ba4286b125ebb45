"""The analytic memory model against PyTorch traces of the real transformers models (issue 2).

Each case builds a reduced-layer Qwen3 of the real shapes on the CPU (fake tensors), measures the
peak of live tensor bytes over a steady-state step (planner/trace.py) and compares it with the
estimate's allocated part (total minus overhead). Tolerance 5% (the issue's bar): the trace sees
every tensor, so the gap is what the model gets wrong, not measurement noise.
"""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from catalog import default_catalog  # noqa: E402
from planner.memory import estimate_memory  # noqa: E402
from planner.strategy import Strategy  # noqa: E402
from planner.trace import trace  # noqa: E402

CASES = [  # model, layers, strategy
    ("qwen3-0.6b", 2, dict(precision="bf16", micro_batch=2, seq_len=1024)),  # the example
    ("qwen3-0.6b", 4, dict(precision="bf16", micro_batch=1, seq_len=1024)),
    ("qwen3-0.6b", 2, dict(precision="bf16", micro_batch=1, seq_len=1024, attention="eager")),
    ("qwen3-0.6b", 2, dict(precision="bf16", micro_batch=1, seq_len=1024, loss="fused")),
    ("qwen3-0.6b", 4, dict(precision="bf16", micro_batch=1, seq_len=1024, checkpointing="full")),
    ("qwen3-0.6b", 2, dict(precision="fp32", micro_batch=1, seq_len=1024)),
    ("qwen3-0.6b", 2, dict(precision="amp", micro_batch=1, seq_len=1024)),
    ("qwen3-0.6b", 2, dict(precision="bf16-mixed", micro_batch=2, seq_len=2048)),
    ("qwen3-0.6b", 2, dict(precision="bf16-mixed", micro_batch=2, seq_len=2048, loss="fused", checkpointing="full")),
    ("qwen3-0.6b", 2, dict(precision="bf16", micro_batch=1, seq_len=1024, grad_accum=2)),
    ("qwen3-0.6b", 2, dict(precision="bf16-mixed", micro_batch=1, seq_len=1024, optimizer="sgd")),
    ("qwen3-0.6b", 4, dict(workload="lora", precision="bf16-mixed", micro_batch=1, seq_len=1024)),
    ("qwen3-0.6b", 2, dict(workload="lora", precision="bf16", micro_batch=1, seq_len=1024)),
    ("qwen3-0.6b", 2, dict(workload="lora", micro_batch=4, seq_len=1024, checkpointing="full", loss="fused")),
    ("qwen3-0.6b", 2, dict(workload="qlora", precision="bf16-mixed", micro_batch=1, seq_len=1024)),
    ("qwen3-1.7b", 2, dict(precision="fp32", micro_batch=4, seq_len=512, checkpointing="full")),
    ("qwen3-8b", 2, dict(precision="bf16-mixed", micro_batch=1, seq_len=2048)),
    ("qwen3-8b", 2, dict(workload="lora", precision="bf16-mixed", micro_batch=2, seq_len=2048)),
    ("qwen3-8b", 2, dict(workload="qlora", micro_batch=1, seq_len=2048, checkpointing="full")),
    ("qwen3-8b", 2, dict(precision="bf16", micro_batch=1, seq_len=2048, loss="fused", optimizer="sgd")),
    ("qwen3-30b", 2, dict(precision="bf16-mixed", micro_batch=1, seq_len=1024)),
    ("qwen3-30b", 2, dict(precision="bf16", micro_batch=2, seq_len=2048, optimizer="sgd")),
    ("qwen3-30b", 2, dict(workload="lora", micro_batch=1, seq_len=1024)),
    ("qwen3-30b", 2, dict(workload="lora", precision="bf16", micro_batch=1, seq_len=2048, checkpointing="full")),
    # serving, dense, with all prompt tokens inside one prefill chunk (the estimate sizes the prefill
    # workspace for an 8k-token chunk, transformers prefills the whole batch at once). MoE prefill is
    # not compared: transformers loops over experts, serving engines run fused MoE kernels.
    ("qwen3-0.6b", 2, dict(workload="serve", concurrency=2, context=2048)),
    ("qwen3-0.6b", 4, dict(workload="serve", concurrency=4, context=2048)),
    ("qwen3-8b", 2, dict(workload="serve", concurrency=1, context=8192)),
]


@pytest.mark.parametrize("name,layers,fields", CASES, ids=[f"{n}-L{l}-{i}" for i, (n, l, _) in enumerate(CASES)])
def test_estimate_matches_trace(name, layers, fields):
    model = default_catalog().model(name)
    strategy = Strategy(**fields)
    measured = trace(model, strategy, num_layers=layers)
    reduced = model.model_copy(update={"num_hidden_layers": layers})
    predicted = estimate_memory(reduced, default_catalog().gpu("h200"), strategy)
    assert predicted.allocated == pytest.approx(measured.peak_bytes, rel=0.05), (
        f"trace {measured.by_category} at {measured.peak_phase}; estimate {predicted}")

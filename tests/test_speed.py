"""Behaviour of the speed and cost model against independent truths (hand-computed from config numbers,
textbook formulas), not against the implementation's own arithmetic."""

from dataclasses import replace

import pytest

from catalog import default_catalog
from planner import flops, speed
from planner.cost import estimate_cost
from planner.memory import gpu_params
from planner.strategy import Strategy

CAT = default_catalog()
H100, A100 = CAT.gpu("h100-sxm"), CAT.gpu("a100-80g-sxm")
LLAMA2_7B, QWEN3_8B, QWEN3_30B_A3B = CAT.model("Llama-2-7B"), CAT.model("qwen3-8b"), CAT.model("Qwen3-30B-A3B")

# Llama-2-7B config.json: L=32, h=4096, 32 heads x 128, MHA, SwiGLU f=11008, V=32000, untied
L, H, F, V = 32, 4096, 11008, 32000
N_LLAMA2 = L * (4 * H * H + 3 * H * F) + V * H          # matmul weights per token incl. lm_head


def test_dense_training_flops_are_palm_6n_plus_12lhqt():
    # nanoGPT estimate_mfu / PaLM appendix B: 6N + 12*L*H*Q*T (non-causal attention)
    s = Strategy(workload="full", seq_len=2048)
    assert flops.training_flops_per_token(LLAMA2_7B, s) == pytest.approx(6 * N_LLAMA2 + 12 * L * 32 * 128 * 2048)


def test_lora_has_no_frozen_weight_gradient():
    # r=8 on q and v: r*(d_in + d_out) = 8*(4096+4096) per matrix, 2 matrices, 32 layers
    s = Strategy(workload="lora", lora_rank=8, lora_targets=("q_proj", "v_proj"), seq_len=2048)
    adapter = 32 * 2 * 8 * (4096 + 4096)
    assert flops.training_flops_per_token(LLAMA2_7B, s) == pytest.approx(
        4 * N_LLAMA2 + 6 * adapter + 12 * L * 32 * 128 * 2048)


def test_full_recompute_adds_one_forward_of_the_layers_and_selective_adds_no_matmul():
    base = Strategy(workload="full", seq_len=2048)
    full = base.model_copy(update={"checkpointing": "full"})
    sel = base.model_copy(update={"checkpointing": "selective"})
    layers = N_LLAMA2 - V * H                                         # the lm_head is not recomputed
    attn_fwd = 2 * L * 32 * 128 * 2048                                # causal forward
    extra = flops.hardware_flops_per_token(LLAMA2_7B, full) - flops.hardware_flops_per_token(LLAMA2_7B, base)
    assert extra == pytest.approx(2 * layers + attn_fwd)
    assert flops.hardware_flops_per_token(LLAMA2_7B, sel) == flops.hardware_flops_per_token(LLAMA2_7B, base)


def test_moe_flops_use_the_active_experts_only():
    # Qwen3-30B-A3B: 48 layers, h 2048, 32 q heads / 4 kv heads x 128, 128 experts top-8 of width 768
    m = QWEN3_30B_A3B
    attn = 2048 * 4096 + 2 * 2048 * 512 + 4096 * 2048
    per_layer = attn + 2048 * 128 + 8 * 3 * 2048 * 768                # + router + 8 SwiGLU experts
    n = 48 * per_layer + 151936 * 2048                                # + untied lm_head
    assert flops.matmul_params(m) == n
    s = Strategy(workload="pretrain", seq_len=4096)
    more_experts = m.model_copy(update={"num_experts": 256})          # same top-k, twice the experts
    dense = flops.dense_hardware_flops_per_token
    assert dense(more_experts, s) - dense(m, s) == pytest.approx(6 * 48 * 2048 * 128)  # only the router grows


def test_prefill_flops_are_2n_plus_causal_attention():
    assert flops.prefill_flops_per_token(LLAMA2_7B, 4096) == pytest.approx(2 * N_LLAMA2 + 2 * L * 4096 * 4096)


def test_speed_gemm_shapes_add_up_to_the_flops_formula():
    # the per-shape GEMM list of speed.py and the per-token formula of flops.py are the same FLOPs
    for m, s in [(QWEN3_8B, Strategy(workload="full", checkpointing="full", seq_len=4096)),
                 (QWEN3_8B, Strategy(workload="lora", lora_rank=16, seq_len=4096)),
                 (QWEN3_30B_A3B, Strategy(workload="pretrain", num_gpus=8, ep=8, seq_len=4096))]:
        tokens = s.micro_batch * s.seq_len
        rec = flops.recompute_passes(s)
        layer = sum((2 + t + rec) * c * 2 * M * K * N for M, K, N, c, t in speed.layer_gemms(m, s, tokens, m.is_moe))
        head = (2 if s.is_peft else 3) * 2 * tokens * m.hidden_size * m.vocab_size
        per_token = (m.num_hidden_layers * layer + head) / tokens
        assert per_token == pytest.approx(flops.dense_hardware_flops_per_token(m, s))


def test_gemm_roofline_reproduces_the_measured_matmul_ceilings():
    # calibration source: 267.9 of 312 TFLOP/s (A100) and 792.1 of 989 (H100) at their best shapes
    cal = speed.calibration()
    for gpu, (m, n, k), mamf in [(A100, (6912, 16384, 2048), 267.9e12), (H100, (6144, 17920, 2816), 792.1e12)]:
        t = speed.gemm_seconds(gpu, m, k, n, speed.peak_flops(gpu, "bf16"), 2, 2, cal)
        assert 2 * m * n * k / t == pytest.approx(mamf, rel=0.005)


def test_efficiency_grows_with_matrix_size_and_h100_is_harder_to_saturate():
    cal = speed.calibration()

    def share(gpu, h):
        peak = speed.peak_flops(gpu, "bf16")
        return 2 * 8192 * h * h / speed.gemm_seconds(gpu, 8192, h, h, peak, 2, 2, cal) / peak

    assert share(H100, 1024) < share(H100, 4096) < share(H100, 8192)
    assert share(H100, 4096) < share(A100, 4096)


def test_bubble_is_p_minus_1_over_m_plus_p_minus_1():
    assert speed.bubble_fraction(4, 8) == pytest.approx(3 / 11)
    s = Strategy(workload="full", num_gpus=8, pp=4, grad_accum=8, seq_len=2048)
    t = speed.training_throughput(QWEN3_8B, H100, s)
    mb = speed.microbatch_seconds(QWEN3_8B, H100, s)
    assert t.bubble_seconds == pytest.approx(3 * mb.total)       # (p-1) micro-batch slots of the stage


def test_tensor_and_expert_parallel_communication_vanish_without_them():
    s = Strategy(workload="full", num_gpus=8, zero=3, seq_len=2048)
    mb = speed.microbatch_seconds(QWEN3_8B, H100, s)
    assert mb.tp_comm == 0 and mb.ep_comm == 0 and mb.pp_comm == 0
    mb2 = speed.microbatch_seconds(QWEN3_8B, H100, s.model_copy(update={"tp": 2}))
    assert mb2.tp_comm > 0
    moe = Strategy(workload="pretrain", num_gpus=8, ep=8, zero=3, seq_len=2048)
    assert speed.microbatch_seconds(QWEN3_30B_A3B, H100, moe).ep_comm > 0


def test_zero3_moves_1_5x_the_data_parallel_volume():
    # ZeRO §7: ZeRO-1/2 = all-reduce volume (2 psi); ZeRO-3 = 3 psi per step at grad_accum 1
    cal = replace(speed.calibration(), collective_latency_s=0.0)
    s2 = Strategy(workload="full", num_gpus=8, zero=2, seq_len=2048)
    step2, _ = speed.dp_comm(QWEN3_8B, H100, s2, cal)
    _, mb3 = speed.dp_comm(QWEN3_8B, H100, s2.model_copy(update={"zero": 3}), cal)
    assert mb3 / step2 == pytest.approx(1.5)


def test_all_reduce_time_follows_the_ring_formula_and_the_network_is_slower_than_nvlink():
    cal = replace(speed.calibration(), collective_latency_s=0.0)
    s = Strategy(workload="full", num_gpus=8, zero=0, seq_len=2048)
    step, _ = speed.dp_comm(QWEN3_8B, H100, s, cal)
    params = gpu_params(QWEN3_8B, s, first_stage=False).base
    # nccl-tests: t = (S/B) * 2(n-1)/n, S = 2 bytes per bf16 gradient, B = NVLink 450 GB/s x efficiency
    assert step == pytest.approx(2 * params / (450e9 * cal.link_efficiency) * 2 * 7 / 8)
    # 32 GPUs on 8-GPU nodes: the ring crosses the network (8 x 50 GB/s per node, capped by NVLink)
    s32 = s.model_copy(update={"num_gpus": 32})
    assert speed.dp_comm(QWEN3_8B, H100, s32, cal)[0] > step


def test_decode_at_batch_one_is_a_weight_stream():
    # TPOT ~ weight bytes / (HBM bandwidth x achievable share), share = 1/gemm traffic
    s = Strategy(workload="serve", concurrency=1, context=16)
    t = speed.estimate_throughput(QWEN3_8B, H100, s)
    weights = 2 * (QWEN3_8B.num_hidden_layers * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 12288)
                   + 151936 * 4096)
    bound = weights * speed.calibration().gemm_traffic / (H100.hbm_gbps * 1e9)
    assert t.tpot_seconds == pytest.approx(bound, rel=0.05)
    fp8 = speed.estimate_throughput(QWEN3_8B, H100, s.model_copy(update={"weights": "fp8"}))
    assert fp8.tpot_seconds < 0.6 * t.tpot_seconds                 # half the weight bytes (lm_head stays bf16)


def test_decode_kv_read_grows_with_concurrency_and_context():
    short = speed.estimate_throughput(QWEN3_8B, H100, Strategy(workload="serve", concurrency=32, context=1024))
    long = speed.estimate_throughput(QWEN3_8B, H100, Strategy(workload="serve", concurrency=32, context=8192))
    assert long.tpot_seconds > short.tpot_seconds
    assert short.tokens_per_s == pytest.approx(32 / short.tpot_seconds)


def test_moe_decode_reads_the_touched_experts():
    one = speed.decode_step_seconds(QWEN3_30B_A3B, H100, Strategy(workload="serve"), 1, 16)
    many = speed.decode_step_seconds(QWEN3_30B_A3B, H100, Strategy(workload="serve"), 256, 16)
    active_bytes = 2 * flops.matmul_params(QWEN3_30B_A3B)             # 8 of 128 experts per layer
    assert one == pytest.approx(active_bytes * speed.calibration().gemm_traffic / (H100.hbm_gbps * 1e9), rel=0.1)
    assert many > 5 * one                                             # nearly all 128 experts touched


def test_prefill_is_compute_bound():
    s = Strategy(workload="serve", concurrency=1, context=8192)
    ttft = speed.prefill_seconds(QWEN3_8B, H100, s, 8192)
    ideal = 8192 * flops.prefill_flops_per_token(QWEN3_8B, 8192) / (H100.bf16_tflops * 1e12)
    assert ideal < ttft < 3 * ideal


def test_step_parts_add_up_and_offload_costs_time():
    s = Strategy(workload="full", num_gpus=16, tp=2, pp=2, zero=1, grad_accum=8, seq_len=2048)
    t = speed.training_throughput(QWEN3_8B, H100, s)
    assert t.step_seconds == pytest.approx(t.compute_seconds + t.communication_seconds + t.bubble_seconds
                                           + t.offload_seconds)
    assert t.tokens_per_s == pytest.approx(2048 * 8 * s.dp / t.step_seconds)
    off = speed.training_throughput(QWEN3_8B, H100, s.model_copy(update={"offload": True}))
    assert off.offload_seconds > 0 and off.tokens_per_s < t.tokens_per_s


def test_mfu_is_model_flops_over_peak():
    s = Strategy(workload="full", num_gpus=8, zero=3, seq_len=4096)
    t = speed.training_throughput(QWEN3_8B, H100, s)
    assert t.mfu == pytest.approx(flops.training_flops_per_token(QWEN3_8B, s) * t.tokens_per_s / (8 * 989e12))
    assert 0.2 < t.mfu < 0.6


def test_cost_arithmetic():
    s = Strategy(workload="full", num_gpus=8, zero=3, seq_len=4096)
    t = speed.Throughput(tokens_per_s=50_000)
    c = estimate_cost(H100, s, t, tokens=1e9)
    assert c.usd_per_hour == pytest.approx(8 * H100.price_hourly.usd)
    assert c.capex_usd == pytest.approx(8 * H100.price_purchase.usd)
    assert c.job_hours == pytest.approx(1e9 / 50_000 / 3600)
    assert c.usd_total == pytest.approx(c.usd_per_hour * c.job_hours)
    assert c.usd_per_million_tokens == pytest.approx(c.usd_per_hour / (50_000 * 3600) * 1e6)
    assert estimate_cost(H100, s, t).usd_total is None
    cheap = CAT.with_hourly_price("h100", 2.0).gpu("h100")             # --price h100=2.0
    assert estimate_cost(cheap, s, t).usd_per_hour == pytest.approx(16.0)


def test_done_means_examples():
    train = Strategy(workload="full", num_gpus=8, zero=3, seq_len=4096)
    t = speed.estimate_throughput(QWEN3_8B, H100, train)
    c = estimate_cost(H100, train, t, tokens=1e9)
    assert t.tokens_per_s > 0 and t.step_seconds > 0 and c.usd_total > 0
    serve = Strategy(workload="serve", num_gpus=2, tp=2, concurrency=32, context=4096, weights="fp8")
    t = speed.estimate_throughput(CAT.model("qwen3-32b"), H100, serve)
    c = estimate_cost(H100, serve, t)
    assert 0 < t.ttft_seconds < 2 and 0 < t.tpot_seconds < 0.1 and c.usd_per_million_tokens > 0

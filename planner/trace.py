"""Measured memory of one training step (or one serving prefill) of the real transformers model.

The analytic model (planner/memory.py) is tested against these numbers. The model is built on the
CPU under FakeTensorMode: tensors carry shapes, dtypes and storages but no data, so any batch and
sequence costs no compute, while every op still allocates its outputs as it would on a GPU.
A dispatch-mode tracker counts the bytes of each live untyped storage once, by category, from the
op that creates it until Python frees it. What it cannot see: kernel workspaces (cuBLAS, flash
attention scratch), allocator rounding and fragmentation, the CUDA context and communication
buffers. Those belong to the analytic model's overhead term, not to this trace.

One known bias: under any dispatch mode autograd sums the gradient contributions that meet at one
tensor out of place (isTensorSubclassLike), where a plain run mostly adds them in place. Checked
against the CPU allocator of real runs (see _selftest), peaks agree to 0.1%, except where such a
sum is the peak: a trained lm_head fed by several contributions (tied embedding, chunked loss) can
then show one vocab x hidden buffer more than a real run (a note says when this can happen).

A training trace measures a steady-state step: one warm-up step creates the optimizer state, its
gradients are released (zero_grad(set_to_none=True)), and the next step is measured.
"""

from __future__ import annotations

import functools
import math
import weakref
from contextlib import contextmanager
from typing import Callable

from pydantic import BaseModel, ConfigDict

from catalog.schema import ModelArch
from planner.strategy import ALL_LINEAR, Strategy

CATEGORIES = ("weights", "gradients", "optimizer", "activations")
FUSED_LOSS_CHUNKS = 8
NF4_BLOCK = 64          # bitsandbytes 4-bit quantization block (weights per absmax)
NF4_NESTED_BLOCK = 256  # double quantization: absmax values per fp32 scale
_LR = 1e-4


class TraceUnsupported(ValueError):
    """A strategy the single-process CPU trace cannot reproduce; the message is one line."""


class TraceResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    layers: int
    peak_bytes: int
    peak_phase: str
    by_category: dict[str, int]
    phase_peaks: dict[str, int]
    notes: list[str] = []


# --- what the trace can reproduce -------------------------------------------------------------

def _check_supported(arch: ModelArch, strategy: Strategy) -> None:
    s = strategy
    degrees = (("num_gpus", s.num_gpus), ("tp", s.tp), ("pp", s.pp), ("ep", s.ep))
    distributed = [f"{k}={v}" for k, v in degrees if v > 1]
    distributed += [f"zero={s.zero}"] if s.zero else []
    if distributed:
        raise TraceUnsupported(f"the trace runs one process; {', '.join(distributed)} needs a distributed run")
    if s.offload:
        raise TraceUnsupported("offload moves optimizer state to host memory; the trace has a single device")
    if s.workload == "serve":
        if s.weight_format != "bf16":
            raise TraceUnsupported(f"serving with --weights {s.weight_format} is not traced (bf16 weights only)")
        if s.kv_cache != "bf16":
            raise TraceUnsupported(f"--kv-cache {s.kv_cache}: DynamicCache holds keys and values in bf16 only")
        return
    if s.workload == "qlora" and s.weight_format != "nf4":
        raise TraceUnsupported(f"qlora with --weights {s.weight_format}: only the NF4 base is emulated")
    if s.precision == "fp8-mixed":
        raise TraceUnsupported("fp8-mixed needs Transformer Engine kernels, which do not run on the CPU")
    if s.optimizer == "adamw-8bit":
        raise TraceUnsupported("adamw-8bit needs the bitsandbytes CUDA optimizer; an emulation would only "
                               "restate the analytic model's assumption")
    if s.checkpointing == "selective":
        raise TraceUnsupported("selective checkpointing is a Megatron feature; transformers only checkpoints "
                               "whole layers")
    if arch.is_moe and s.workload == "qlora":
        raise TraceUnsupported("qlora on MoE: how bitsandbytes stores fused 3-D expert weights is not emulated")
    if arch.is_moe and s.is_peft and len({"gate_proj", "up_proj"} & set(s.lora_targets)) == 1:
        raise TraceUnsupported("PEFT targets the fused MoE gate_up_proj only with both gate_proj and up_proj")


def hf_config_from_arch(arch: ModelArch, num_layers: int | None = None):
    """The transformers config of `arch` (every architectural field), with `num_layers` decoder layers."""
    import transformers

    classes = {"qwen3": transformers.Qwen3Config, "qwen3_moe": transformers.Qwen3MoeConfig,
               "qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig,
               "mistral": transformers.MistralConfig}
    if arch.family not in classes:
        raise TraceUnsupported(f"{arch.name}: family {arch.family!r} has no transformers model to trace")
    # Fields transformers hard-codes per family: refuse an arch that claims otherwise rather than
    # trace a different model.
    if not arch.gated_mlp or arch.norm_has_bias:
        raise TraceUnsupported(f"{arch.name}: transformers' {arch.family} has a SwiGLU MLP and bias-free RMSNorm")
    if arch.qk_norm != (arch.family in ("qwen3", "qwen3_moe")):
        raise TraceUnsupported(f"{arch.name}: qk_norm={arch.qk_norm} contradicts transformers' {arch.family}")
    if arch.qkv_bias != (arch.family == "qwen2"):
        # Qwen2 always biases q, k, v; the others' attention_bias would also bias o_proj
        raise TraceUnsupported(f"{arch.name}: qkv_bias={arch.qkv_bias} cannot be built with transformers' "
                               f"{arch.family}")
    fields = dict(
        vocab_size=arch.vocab_size, hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=num_layers or arch.num_hidden_layers, num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        # Qwen2/Qwen3-MoE configs do not declare head_dim but their attention reads it when present
        head_dim=arch.head_dim,
        max_position_embeddings=arch.max_position_embeddings, tie_word_embeddings=arch.tie_word_embeddings)
    if arch.family == "mistral":
        fields["sliding_window"] = None  # the catalog has no window; a window would shrink the KV cache
    if arch.is_moe:
        fields.update(num_experts=arch.num_experts, num_experts_per_tok=arch.num_experts_per_tok,
                      moe_intermediate_size=arch.moe_intermediate_size,
                      decoder_sparse_step=arch.decoder_sparse_step, mlp_only_layers=list(arch.mlp_only_layers),
                      norm_topk_prob=True)  # as Qwen3 MoE checkpoints set it; no effect on memory
    return classes[arch.family](**fields)


# --- the live-storage tracker -----------------------------------------------------------------

@functools.cache
def _live_bytes_mode():
    """The tracker class (built lazily so that importing this module does not import torch)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class LiveBytes(TorchDispatchMode):
        """Bytes of live storages by category; the peak per phase and the split at the global peak.

        Every op output's untyped storage is registered once (views and aliases share it) under the
        phase's default category; `label` moves known tensors (parameters, gradients, optimizer
        state) to their category. A weakref on the storage subtracts it when it is freed.
        """

        def __init__(self, categories=CATEGORIES):
            super().__init__()
            self.current = dict.fromkeys(categories, 0)
            self.total = 0
            self.ops: set[str] = set()
            self._live: dict[int, list] = {}  # id(storage) -> [category, nbytes, weakref]
            self._phase: str | None = None
            self.reset()

        def reset(self) -> None:
            self.peak, self.peak_phase, self.peak_split = 0, "", dict(self.current)
            self.phase_peaks: dict[str, int] = {}

        def label(self, category: str, *tensors) -> None:
            for t in tensors:
                if t is not None:
                    self._register(t, category, relabel=True)

        @contextmanager
        def phase(self, name: str):
            self._phase = name
            self._note_peak()  # a phase that allocates nothing still holds what is live
            try:
                yield
            finally:
                self._phase = None

        def _register(self, t, category: str, relabel: bool) -> None:
            st = t.untyped_storage()
            key = id(st)
            info = self._live.get(key)
            if info is None:
                # the weakref callback runs before the id can be reused by another storage
                info = [category, 0, weakref.ref(st, lambda _, key=key: self._free(key))]
                self._live[key] = info
            elif relabel and info[0] != category:
                self.current[info[0]] -= info[1]
                self.current[category] += info[1]
                info[0] = category
            nbytes = st.nbytes()
            if nbytes != info[1]:  # new, or resized in place (out= ops)
                self.current[info[0]] += nbytes - info[1]
                self.total += nbytes - info[1]
                info[1] = nbytes

        def _free(self, key: int) -> None:
            category, nbytes, _ = self._live.pop(key)
            self.current[category] -= nbytes
            self.total -= nbytes

        def _note_peak(self) -> None:
            phase = self._phase
            if self.total > self.phase_peaks.get(phase, -1):
                self.phase_peaks[phase] = self.total
            if self.total > self.peak:
                self.peak, self.peak_phase, self.peak_split = self.total, phase, dict(self.current)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.ops.add(func.name())
            category = "optimizer" if self._phase == "optimizer" else "activations"
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self._register(t, category, relabel=False)
            if self._phase is not None:
                self._note_peak()
            return out

    return LiveBytes


# --- QLoRA: bitsandbytes NF4 storage, emulated -------------------------------------------------

@functools.cache
def _nf4_linear():
    """A frozen linear layer stored and computed the way bitsandbytes Linear4bit does (lazy, as above)."""
    import torch

    class NF4Matmul(torch.autograd.Function):
        """bitsandbytes MatMul4Bit: dequantize, matmul; saves no input (the weight is frozen) and
        dequantizes again in backward for the input gradient."""

        @staticmethod
        def forward(ctx, x, layer):
            ctx.layer = layer
            return torch.nn.functional.linear(x, layer.dequantize().to(x.dtype))

        @staticmethod
        def backward(ctx, grad):
            return grad @ ctx.layer.dequantize().to(grad.dtype), None

    class NF4Linear(torch.nn.Module):
        """NF4 codes packed two per uint8, a uint8 absmax per 64 weights and an fp32 scale per 256
        absmax (double quantization): 4.127 bits per weight. The 16- and 256-entry code tables
        (shared, under 1.1 KiB) are left out."""

        def __init__(self, linear: torch.nn.Linear):
            super().__init__()
            n = linear.weight.numel()
            blocks = math.ceil(n / NF4_BLOCK)
            kw = dict(device=linear.weight.device)
            self.register_buffer("packed", torch.empty((n + 1) // 2, dtype=torch.uint8, **kw))
            self.register_buffer("absmax", torch.empty(blocks, dtype=torch.uint8, **kw))
            self.register_buffer("absmax_scale", torch.empty(math.ceil(blocks / NF4_NESTED_BLOCK), **kw))
            self.bias = linear.bias
            self.weight_shape, self.compute_dtype = linear.weight.shape, linear.weight.dtype

        def dequantize(self):
            # bitsandbytes' dequantize kernel writes straight into its output, so only the output is
            # allocated; its values do not matter, the trace measures memory only.
            return torch.empty(self.weight_shape, dtype=self.compute_dtype, device=self.packed.device)

        def forward(self, x):
            out = NF4Matmul.apply(x, self)
            return out if self.bias is None else out + self.bias

    return NF4Linear


def _quantize_base(model) -> int:
    """Replace the frozen decoder-layer projections (bare, or a LoRA layer's base_layer) by NF4Linear,
    as transformers' bitsandbytes integration does (lm_head and embeddings stay as they are)."""
    import torch

    nf4_linear = _nf4_linear()
    replaced = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            projection = name.rsplit(".", 1)[-1] if child_name == "base_layer" else child_name
            if projection in ALL_LINEAR and type(child) is torch.nn.Linear:
                setattr(module, child_name, nf4_linear(child))
                replaced += 1
    return replaced


# --- building the model ----------------------------------------------------------------------

def _build(config, strategy: Strategy, notes: list[str]):
    """The model on the meta device, set up as the strategy says (checkpointing, LoRA, NF4 base).

    Built on meta rather than under FakeTensorMode because PEFT moves adapters with module.to(),
    which must swap fake parameters and cannot (FakeTensorMode holds weakrefs to them).
    """
    import torch
    import transformers

    s = strategy
    dtype = torch.float32 if s.precision in ("fp32", "amp") and s.is_training else torch.bfloat16
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation="sdpa" if s.attention == "flash" else "eager")
    if not s.is_training:
        return model.eval()
    model.train()
    if s.checkpointing == "full":
        # also makes the embedding output require grad, which a frozen-base LoRA needs
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if s.is_peft:
        model = _add_lora(model, s, notes)
    if s.workload == "qlora":
        notes.append(f"qlora: {_quantize_base(model)} projections emulate bitsandbytes NF4 with double "
                     f"quantization (packed uint8 + absmax), dequantized to {str(dtype)[6:]} transiently")
    return model


def _add_lora(model, strategy: Strategy, notes: list[str]):
    from peft import LoraConfig, get_peft_model

    r = strategy.lora_rank
    config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=list(strategy.lora_targets),
                        task_type="CAUSAL_LM")
    # PEFT upcasts bf16 adapters to fp32 by default: that is bf16-mixed for LoRA (fp32 trainable
    # weights, grads and states, no separate master copy). Pure bf16 keeps them bf16.
    model = get_peft_model(model, config, autocast_adapter_dtype=strategy.precision != "bf16")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    notes.append(f"lora: {trainable:,} adapter parameters")
    if any(".experts." in name for name, _ in model.named_modules()):
        # transformers 5 fuses the experts into 3-D parameters; PEFT maps the v4 target names onto them
        notes.append("MoE experts: PEFT adapts the fused 3-D expert weights per expert (gate+up at rank 2r) and "
                     "materializes weight + delta for each layer's forward, saved for backward")
    return model


def _materialize(model) -> None:
    """Meta parameters and buffers -> fake CPU tensors (FakeTensorMode is active); ties preserved.

    CPU, not meta, so that ops pick the kernels they pick on a real device (e.g. SDPA's flash kernel).
    """
    import torch

    memo: dict[int, tuple] = {}  # id(meta tensor) -> (meta tensor, kept alive so ids stay unique; fake)
    for module in model.modules():
        for slots in (module._parameters, module._buffers):
            for name, t in slots.items():
                if t is None:
                    continue
                if id(t) not in memo:
                    fake = torch.empty(t.shape, dtype=t.dtype, device="cpu")
                    if isinstance(t, torch.nn.Parameter):
                        fake = torch.nn.Parameter(fake, requires_grad=t.requires_grad)
                    memo[id(t)] = (t, fake)
                slots[name] = memo[id(t)][1]


# --- the step --------------------------------------------------------------------------------

def _chunked_cross_entropy(hidden, lm_head, labels):
    """Fused/chunked loss: each chunk's logits and fp32 cross entropy live inside a checkpoint, so one
    chunk's logits are alive at a time (torchtune CEWithChunkedOutputLoss, Liger)."""
    from torch.nn.functional import cross_entropy, pad
    from torch.utils.checkpoint import checkpoint

    targets = pad(labels[:, 1:], (0, 1), value=-100)  # position t predicts token t+1, as ForCausalLMLoss

    def chunk_loss(h, t):
        return cross_entropy(lm_head(h).float().flatten(0, 1), t.flatten(), ignore_index=-100, reduction="sum")

    chunks = zip(hidden.chunk(FUSED_LOSS_CHUNKS, dim=1), targets.chunk(FUSED_LOSS_CHUNKS, dim=1))
    total = sum(checkpoint(chunk_loss, h, t, use_reentrant=False) for h, t in chunks)
    return total / (targets != -100).sum()


def _optimizer_step(strategy: Strategy, params: list, tracker, notes: list[str]) -> Callable[[], None]:
    """The optimizer phase as one callable: step, then release (or zero) the gradients."""
    import torch

    def make(group):
        if strategy.optimizer == "sgd":
            return torch.optim.SGD(group, lr=_LR, momentum=0.0, foreach=True)
        # foreach is the GPU default; its step allocates temporaries the size of the parameter group
        return torch.optim.AdamW(group, lr=_LR, foreach=True)

    # LoRA adapters under bf16-mixed are fp32 already (PEFT upcasts them): no masters needed
    if strategy.precision != "bf16-mixed" or params[0].dtype != torch.bfloat16:
        optimizer = make(params)

        def step():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    # Megatron-style bf16-mixed: an fp32 master per bf16 parameter (optimizer state) and a persistent
    # fp32 main_grad (gradient) that each bf16 grad is accumulated into as soon as it is produced.
    notes.append("bf16-mixed: fp32 masters (optimizer) + fp32 main_grad buffers (gradients), Megatron style")
    masters = [p.detach().float() for p in params]
    main_grads = [torch.zeros_like(m) for m in masters]
    for m, g in zip(masters, main_grads):
        m.grad = g
    tracker.label("optimizer", *masters)
    tracker.label("gradients", *main_grads)

    def accumulate(main_grad, p):
        main_grad.add_(p.grad)  # in-place, type-promoting: no fp32 copy of the bf16 grad
        p.grad = None

    for p, g in zip(params, main_grads):
        p.register_post_accumulate_grad_hook(functools.partial(accumulate, g))
    optimizer = make(masters)

    @torch.no_grad()
    def step():
        optimizer.step()
        torch._foreach_copy_(params, masters)  # masters -> bf16 weights, cast in place
        torch._foreach_zero_(main_grads)
    return step


def _train(model, arch: ModelArch, strategy: Strategy, tracker, notes: list[str]) -> None:
    import torch

    s = strategy
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        # registered before the bf16-mixed hook, which then moves the grad into main_grad
        p.register_post_accumulate_grad_hook(lambda p: tracker.label("gradients", p.grad))
    optimizer_step = _optimizer_step(s, params, tracker, notes)
    if s.precision == "amp":
        notes.append("amp: bf16 weight copies cached by autocast during forward count as activations")
    causal_lm = model.get_base_model() if s.is_peft else model
    if s.loss == "fused":
        notes.append(f"fused loss: {FUSED_LOSS_CHUNKS} checkpointed chunks of lm_head + fp32 cross entropy")
    lm_head = causal_lm.get_output_embeddings().weight
    if lm_head.requires_grad and (s.loss == "fused" or lm_head is causal_lm.get_input_embeddings().weight):
        notes.append("lm_head gradient contributions are summed out of place under the tracker; a real run "
                     "sums most in place (up to one vocab x hidden buffer less if such a sum is the peak)")
    ids = torch.randint(0, arch.vocab_size, (s.micro_batch, s.seq_len))

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.precision == "amp"):
            if s.loss == "unfused":
                # only the loss survives; HF's ForCausalLMLoss upcasts the logits to fp32
                return model(input_ids=ids, labels=ids, use_cache=False).loss
            hidden = causal_lm.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
            return _chunked_cross_entropy(hidden, causal_lm.get_output_embeddings(), ids)

    def step():
        for _ in range(s.grad_accum):
            with tracker.phase("forward"):
                loss = forward()
            with tracker.phase("backward"):
                loss.backward()
                del loss
        with tracker.phase("optimizer"):
            optimizer_step()

    step()  # warm-up: creates the optimizer state
    tracker.reset()
    step()


def _serve(model, arch: ModelArch, strategy: Strategy, tracker, notes: list[str]) -> None:
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    update = cache.update

    def labelled_update(*args, **kwargs):
        keys, values = update(*args, **kwargs)
        tracker.label("kv_cache", keys, values)
        return keys, values

    cache.update = labelled_update
    ids = torch.randint(0, arch.vocab_size, (strategy.concurrency, strategy.context))
    with torch.no_grad(), tracker.phase("prefill"):
        # one prefill of every sequence, logits of the last position only, as generate() does
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    notes.append("serve: one prefill forward of all sequences, DynamicCache in bf16")


def _attention_note(ops: set[str]) -> str:
    sdpa = sorted(op.removeprefix("aten::") for op in ops if "scaled_dot_product" in op and "backward" not in op)
    if sdpa:
        return f"attention kernel: {', '.join(sdpa)}"
    return "attention: eager (matmul + fp32 softmax, s x s scores materialized)"


def _prepare(arch: ModelArch, strategy: Strategy, num_layers: int | None, notes: list[str]):
    """Check, configure and build (on meta): everything before any tensor exists."""
    _check_supported(arch, strategy)
    config = hf_config_from_arch(arch, num_layers)
    return config, _build(config, strategy, notes)


def _execute(model, arch: ModelArch, strategy: Strategy, tracker, notes: list[str]) -> None:
    """Materialize the model and run the step; fake tensors or real ones, whichever mode is active."""
    from unittest import mock

    # The sequences are not packed (positions 0..s-1), which transformers checks on the values, so
    # on fake tensors it assumes packing and builds an s x s mask (and repeats K/V for SDPA). Give
    # it the answer real data gives: no packing, no mask, causal flash attention.
    with mock.patch("transformers.masking_utils.find_packed_sequence_indices", return_value=None):
        _materialize(model)
        tracker.label("weights", *model.parameters(), *model.buffers())
        (_serve if strategy.workload == "serve" else _train)(model, arch, strategy, tracker, notes)


def trace(arch: ModelArch, strategy: Strategy, num_layers: int | None = None) -> TraceResult:
    """Peak live bytes of a steady-state training step (or a serving prefill) of `arch` under `strategy`."""
    notes: list[str] = []
    config, model = _prepare(arch, strategy, num_layers, notes)
    from torch._subclasses.fake_tensor import FakeTensorMode

    categories = CATEGORIES + (("kv_cache",) if strategy.workload == "serve" else ())
    with FakeTensorMode(), _live_bytes_mode()(categories) as tracker:
        _execute(model, arch, strategy, tracker, notes)
    notes.append(_attention_note(tracker.ops))
    return TraceResult(layers=config.num_hidden_layers, peak_bytes=tracker.peak, peak_phase=tracker.peak_phase,
                       by_category=tracker.peak_split, phase_peaks=tracker.phase_peaks, notes=notes)


# --- self-test ---------------------------------------------------------------------------------

def _selftest() -> None:
    """Check the measurement; raises AssertionError on any mismatch.

    1. The tracker on a hand-computable step, nn.Linear(64, 32) + foreach AdamW in fp32, on real and
       on fake tensors; 2. the real step against PyTorch's MemTracker; 3. whole traces of a tiny
       Qwen3 against the CPU allocator of the same steps run on real tensors, no dispatch mode active.
    """
    from contextlib import nullcontext

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    P = (64 * 32 + 32) * 4  # weight + bias; also each gradient, each Adam state, the foreach temporary
    S = 2 * P + 2 * 4       # exp_avg + exp_avg_sq + a 4-byte step tensor per parameter
    X, Y, L = 8 * 64 * 4, 8 * 32 * 4, 4  # input, linear output (its square is another Y), loss
    expected = {
        "forward": P + S + X + Y + Y + L,             # after sum(): x, y (saved), y**2, loss
        "backward": P + S + X + L + L + Y + P,        # loss + its grad, grad of y, both .grads
        "optimizer": P + S + X + P + P,               # grads + foreach sqrt(exp_avg_sq) temporary
    }
    for fake in (True, False):  # real last: its layer and optimizer are reused below
        with FakeTensorMode() if fake else nullcontext(), _live_bytes_mode()() as tracker:
            layer = torch.nn.Linear(64, 32)
            tracker.label("weights", *layer.parameters(), layer.weight.t())  # a view counts once
            for p in layer.parameters():
                p.register_post_accumulate_grad_hook(lambda p: tracker.label("gradients", p.grad))
            x = torch.randn(8, 64)
            optimizer = torch.optim.AdamW(layer.parameters(), foreach=True)

            def step():
                with tracker.phase("forward"):
                    loss = layer(x).square().sum()
                with tracker.phase("backward"):
                    loss.backward()
                    del loss
                    assert tracker.current["gradients"] == P, tracker.current
                with tracker.phase("optimizer"):
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)

            step()
            tracker.reset()
            step()
        assert tracker.phase_peaks == expected, (fake, tracker.phase_peaks, expected)
        assert tracker.peak_split == {"weights": P, "gradients": P, "optimizer": S + P, "activations": X}, \
            tracker.peak_split
        end = {"weights": P, "gradients": 0, "optimizer": S, "activations": X}
        assert tracker.current == end, tracker.current  # the steady state: everything else freed

    # PyTorch's own tracker on the same (real) steady-state step
    mem_tracker = MemTracker()
    mem_tracker.track_external(layer, optimizer, x)
    with mem_tracker:
        layer(x).square().sum().backward()
        optimizer.step()
    (peak,) = mem_tracker.get_tracker_snapshot("peak").values()
    assert peak["Total"] == expected["optimizer"], (peak, expected)

    # The whole pipeline on a tiny Qwen3: the fake-tensor trace against the CPU allocator of the same
    # steps run on real tensors with no dispatch mode at all (the profiler sees every allocation).
    tiny = ModelArch(name="tiny", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, intermediate_size=128, vocab_size=4096,
                     tie_word_embeddings=True, qk_norm=True, source="self-test")
    for fields in (dict(seq_len=256), dict(workload="lora", seq_len=256, checkpointing="full"),
                   dict(workload="serve", concurrency=4, context=256)):
        strategy = Strategy(**fields)
        traced = trace(tiny, strategy).peak_bytes
        real = _allocator_peak(tiny, strategy)
        assert abs(traced - real) <= 0.002 * real, (fields, traced, real)  # 0.2%: checkpoint RNG states


class _Untracked:
    """The tracker interface doing nothing, for a run measured by the allocator instead."""

    def label(self, category: str, *tensors) -> None:
        pass

    def reset(self) -> None:
        pass

    @contextmanager
    def phase(self, name: str):
        yield


def _allocator_peak(arch: ModelArch, strategy: Strategy) -> int:
    """Peak bytes held by the CPU allocator while the trace's steps run on real tensors."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    _, model = _prepare(arch, strategy, None, [])
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _execute(model, arch, strategy, _Untracked(), [])
    allocations = []

    def walk(events):
        for e in events:
            if e.tag == _EventType.Allocation:
                allocations.append((e.start_time_ns, e.extra_fields.alloc_size))  # negative: a free
            walk(e.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    held = peak = 0
    for _, size in sorted(allocations):
        held += size
        peak = max(peak, held)
    return peak

"""Strategy flags shared by `estimate`, `trace` and `plan` (where they pin a choice)."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import click

from planner import strategy as st

POSITIVE = click.IntRange(min=1)

# (flag, Strategy field, click type, help). Every default lives in planner.strategy.Strategy.
STRATEGY_FLAGS = [
    ("--workload", "workload", click.Choice(get_args(st.Workload)), "pretrain | full | lora | qlora | serve"),
    ("--num-gpus", "num_gpus", POSITIVE, "GPUs in the cluster (world = tp*pp*dp)"),
    ("--tp", "tp", POSITIVE, "tensor-parallel degree (with sequence parallel)"),
    ("--pp", "pp", POSITIVE, "pipeline-parallel stages (1F1B)"),
    ("--ep", "ep", POSITIVE, "expert-parallel degree (MoE; divides dp)"),
    ("--zero", "zero", click.IntRange(0, 3), "ZeRO/FSDP stage 0-3"),
    ("--precision", "precision", click.Choice(get_args(st.Precision)), "training precision regime"),
    ("--weights", "weights", click.Choice(get_args(st.WeightFormat)),
     "format of frozen/served weights [bf16; nf4 for qlora]"),
    ("--optimizer", "optimizer", click.Choice(get_args(st.Optimizer)), "optimizer"),
    ("--offload/--no-offload", "offload", None, "optimizer states on the CPU"),
    ("--checkpointing", "checkpointing", click.Choice(get_args(st.Checkpointing)), "activation checkpointing"),
    ("--attention", "attention", click.Choice(get_args(st.Attention)), "flash (SDPA) or eager"),
    ("--loss", "loss", click.Choice(get_args(st.Loss)), "unfused (fp32 logits) or fused (chunked) loss"),
    ("--micro-batch", "micro_batch", POSITIVE, "sequences per GPU per micro-step"),
    ("--seq-len", "seq_len", POSITIVE, "training sequence length"),
    ("--grad-accum", "grad_accum", POSITIVE, "micro-batches per optimizer step"),
    ("--lora-rank", "lora_rank", POSITIVE, "LoRA rank"),
    ("--lora-targets", "lora_targets", str, "comma-separated modules [all linear layers]"),
    ("--concurrency", "concurrency", POSITIVE, "serving: concurrent sequences per replica"),
    ("--context", "context", POSITIVE, "serving: tokens per sequence"),
    ("--kv-cache", "kv_cache", click.Choice(get_args(st.KvCacheFormat)), "serving: KV cache format"),
]


def _default_text(field: str) -> str:
    default = st.Strategy.model_fields[field].default
    if isinstance(default, tuple):
        return ",".join(default)
    return "auto" if default is None else str(default).lower()


def strategy_options(show_defaults: bool = True):
    """Add every strategy flag to a click command; values stay None unless given."""
    def decorator(fn):
        for flag, field, kind, text in reversed(STRATEGY_FLAGS):
            help_text = f"{text} [default: {_default_text(field)}]" if show_defaults else text
            if kind is None:
                fn = click.option(flag, field, default=None, help=help_text)(fn)
            else:
                fn = click.option(flag, field, type=kind, default=None, help=help_text)(fn)
        return fn
    return decorator


def pinned_fields(options: dict) -> dict:
    """The strategy fields the user gave, parsed (lora targets split on commas)."""
    fields = {field: options[field] for _, field, _, _ in STRATEGY_FLAGS if options.get(field) is not None}
    if "lora_targets" in fields:
        fields["lora_targets"] = tuple(t.strip() for t in fields["lora_targets"].split(",") if t.strip())
    return fields


def build_strategy(options: dict) -> st.Strategy:
    return st.Strategy(**pinned_fields(options))


def common_options(fn):
    """--model, --catalog, --json: shared by every command that evaluates a model."""
    fn = click.option("--json", "as_json", is_flag=True, help="print one JSON object")(fn)
    fn = click.option("--catalog", "catalog_file", type=click.Path(path_type=Path),
                      help="extra catalog TOML (add GPUs/models, override prices)")(fn)
    return click.option("--model", required=True, help="catalog name/alias or path to a config.json")(fn)


def price_option(fn):
    return click.option("--price", "prices", multiple=True, metavar="GPU=USD_PER_HOUR",
                        help="override a GPU's hourly price (repeatable)")(fn)


def load_catalog_with_prices(catalog_file, prices=()):
    """The catalog, plus the user's TOML file, plus --price overrides."""
    from catalog import CatalogError, load_catalog

    cat = load_catalog(catalog_file)
    for item in prices:
        name, sep, usd = item.partition("=")
        try:
            value = float(usd)
        except ValueError:
            value = None
        if not sep or value is None:
            raise CatalogError(f"--price {item}: expected GPU=USD_PER_HOUR, e.g. h100=2.5")
        cat = cat.with_hourly_price(name, value)
    return cat

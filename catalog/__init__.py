"""The catalog: models and GPUs as data (TOML files beside this module), loaded into typed objects.

Lookups raise CatalogError with a one-line message (and a "did you mean") for the CLI to print.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from pydantic import ValidationError

from catalog.schema import CatalogFile, GpuSpec, ModelArch, Price

DATA_DIR = Path(__file__).parent
DEFAULT_FILES = ("models.toml", "reference_models.toml", "gpus.toml")
HF_MODEL_TYPES = ("qwen3", "qwen3_moe", "qwen2", "llama", "mistral")


class CatalogError(ValueError):
    """Unknown name or malformed catalog/config file; the message is one line for the user."""


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"])
    return f"{where}: {e['msg']}"


class Catalog:
    def __init__(self, models: Iterable[ModelArch], gpus: Iterable[GpuSpec]):
        self.models = {m.name: m for m in models}
        self.gpus = {g.name: g for g in gpus}

    # --- lookups -------------------------------------------------------------
    @staticmethod
    def _index(items: dict) -> dict[str, str]:
        index = {}
        for name, item in items.items():
            for key in (name, *item.aliases):
                index[_norm(key)] = name
        return index

    def _resolve(self, kind: str, items: dict, name: str):
        index = self._index(items)
        key = _norm(name)
        if key in index:
            return items[index[key]]
        close = difflib.get_close_matches(key, list(index), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; see `gpuplan {kind}s`"
        raise CatalogError(f"unknown {kind} '{name}'{hint}")

    def gpu(self, name: str) -> GpuSpec:
        return self._resolve("gpu", self.gpus, name)

    def model(self, name_or_path: str) -> ModelArch:
        """A catalog name or alias, or a path to a Hugging Face config.json."""
        path = Path(name_or_path)
        if name_or_path.endswith(".json") or path.is_file():
            return load_hf_config(path)
        return self._resolve("model", self.models, name_or_path)

    def qwen3_models(self) -> list[ModelArch]:
        return [m for m in self.models.values() if m.family in ("qwen3", "qwen3_moe")]

    # --- user overrides ------------------------------------------------------
    def merged(self, path: Path) -> "Catalog":
        """This catalog plus a user's TOML file: new models/GPUs, replaced GPUs, price overrides."""
        data = _read_catalog_file(path)
        models = {**self.models, **{m.name: m for m in data.model}}
        gpus = {**self.gpus, **{g.name: g for g in data.gpu}}
        merged = Catalog(models.values(), gpus.values())
        for p in data.price:
            gpu = merged.gpu(p.name)
            update = {k: v for k, v in (("price_hourly", p.price_hourly), ("price_purchase", p.price_purchase)) if v}
            merged.gpus[gpu.name] = gpu.model_copy(update=update)
        return merged

    def with_hourly_price(self, gpu_name: str, usd: float) -> "Catalog":
        gpu = self.gpu(gpu_name)
        if usd <= 0:
            raise CatalogError(f"--price {gpu_name}={usd}: price must be positive")
        out = Catalog(self.models.values(), self.gpus.values())
        out.gpus[gpu.name] = gpu.model_copy(
            update={"price_hourly": Price(usd=usd, source="--price on the command line", date="today")})
        return out


def _read_catalog_file(path: Path) -> CatalogFile:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise CatalogError(f"catalog file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CatalogError(f"{path}: not valid TOML ({e})") from None
    try:
        return CatalogFile(**raw)
    except ValidationError as e:
        raise CatalogError(f"{path}: {_first_error(e)}") from None


@lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    models, gpus = [], []
    for name in DEFAULT_FILES:
        data = _read_catalog_file(DATA_DIR / name)
        models += data.model
        gpus += data.gpu
    return Catalog(models, gpus)


def load_catalog(extra: Path | None = None) -> Catalog:
    cat = default_catalog()
    return cat.merged(extra) if extra else cat


# --- Hugging Face config.json ------------------------------------------------

def load_hf_config(path: Path) -> ModelArch:
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CatalogError(f"config file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CatalogError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CatalogError(f"{path}: expected a JSON object")
    return parse_hf_config(raw, name=Path(path).parent.name or Path(path).stem, where=str(path))


def parse_hf_config(cfg: dict, name: str = "custom", where: str = "config.json") -> ModelArch:
    """Exact architecture from a transformers config: head_dim, GQA, tied embeddings, MoE keys."""
    model_type = cfg.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise CatalogError(
            f"{where}: field 'model_type' is {model_type!r}; supported: {', '.join(HF_MODEL_TYPES)}")

    def need(key: str, kind=int):
        if key not in cfg:
            raise CatalogError(f"{where}: missing field '{key}'")
        value = cfg[key]
        if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise CatalogError(f"{where}: field '{key}' must be a positive integer, got {value!r}")
        return value

    hidden = need("hidden_size")
    heads = need("num_attention_heads")
    layers = need("num_hidden_layers")
    vocab = need("vocab_size")
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads  # Qwen3 sets head_dim explicitly (128)
    if hidden % heads and not cfg.get("head_dim"):
        raise CatalogError(f"{where}: field 'head_dim' missing and hidden_size is not divisible by heads")
    is_moe = model_type == "qwen3_moe"
    fields = dict(
        name=name, family=model_type, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        intermediate_size=cfg.get("intermediate_size") or (need("intermediate_size") if not is_moe else 1),
        vocab_size=vocab,
        # Qwen3Config, Qwen2Config, LlamaConfig and MistralConfig all default to untied
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qk_norm=model_type in ("qwen3", "qwen3_moe"),
        qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
        max_position_embeddings=cfg.get("max_position_embeddings", 32768),
        source=f"Hugging Face config.json: {where}",
    )
    if is_moe:
        fields.update(num_experts=need("num_experts"), num_experts_per_tok=need("num_experts_per_tok"),
                      moe_intermediate_size=need("moe_intermediate_size"),
                      decoder_sparse_step=cfg.get("decoder_sparse_step", 1),
                      mlp_only_layers=tuple(cfg.get("mlp_only_layers") or ()))
    try:
        return ModelArch(**fields)
    except ValidationError as e:
        raise CatalogError(f"{where}: field {_first_error(e)}") from None


@lru_cache(maxsize=1)
def runtime_constants() -> dict:
    """Quantized-format sizes, runtime overheads and serving defaults (catalog/runtime.toml)."""
    with open(DATA_DIR / "runtime.toml", "rb") as f:
        return tomllib.load(f)

"""Cost of a configuration: rent per hour, purchase price, a training job, a million served tokens.

Prices come from the catalog (GpuSpec.price_hourly: USD per GPU-hour; price_purchase: USD per GPU);
`--price GPU=USD_PER_HOUR` replaces the hourly price before this is called (Catalog.with_hourly_price).
Units: USD, hours; tokens are trained tokens (training) or generated output tokens (serve).
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field

from catalog.schema import GpuSpec
from planner.speed import Throughput
from planner.strategy import Strategy


class Cost(BaseModel):
    usd_per_hour: float = Field(..., description="hourly price x GPUs")
    capex_usd: float = Field(..., description="purchase price x GPUs")
    usd_total: Optional[float] = Field(None, description="the job of `tokens` tokens at usd_per_hour")
    job_hours: Optional[float] = Field(None, description="tokens / tokens_per_s / 3600")
    usd_per_million_tokens: Optional[float] = Field(None, description="usd_per_hour per million tokens/hour")


def cluster_usd_per_hour(gpu: GpuSpec, num_gpus: int) -> float:
    return gpu.price_hourly.usd * num_gpus


def capex_usd(gpu: GpuSpec, num_gpus: int) -> float:
    return gpu.price_purchase.usd * num_gpus


def job_hours(tokens: float, tokens_per_s: float) -> float:
    return tokens / tokens_per_s / 3600


def usd_per_million_tokens(usd_per_hour: float, tokens_per_s: float) -> float:
    """Dollars per 1e6 tokens at full utilisation: (USD/h) / (tokens/h) x 1e6."""
    return usd_per_hour / (tokens_per_s * 3600) * 1e6


def estimate_cost(gpu: GpuSpec, s: Strategy, throughput: Throughput, tokens: float | None = None) -> Cost:
    """Cost of `s` on `gpu`: always $/hour and capex; with `tokens`, the job's hours and dollars;
    serving (or any run with a throughput) also gets $ per million tokens."""
    per_hour = cluster_usd_per_hour(gpu, s.num_gpus)
    hours = job_hours(tokens, throughput.tokens_per_s) if tokens else None
    return Cost(usd_per_hour=per_hour, capex_usd=capex_usd(gpu, s.num_gpus), job_hours=hours,
                usd_total=per_hour * hours if hours is not None else None,
                usd_per_million_tokens=usd_per_million_tokens(per_hour, throughput.tokens_per_s))

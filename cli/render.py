"""Terminal rendering (rich tables). No science here: values come from planner results."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from planner.memory import TERMS, MemoryBreakdown

GIB = 2 ** 30


def console() -> Console:
    """A console that does not squeeze tables to 80 columns when the output is piped to a file."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def gib(n: float) -> str:
    return f"{n / GIB:,.2f}"


def memory_table(mem: MemoryBreakdown, title: str = "Per-GPU memory") -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("term")
    table.add_column("GiB", justify="right")
    table.add_column("share", justify="right")
    for term in TERMS:
        value = getattr(mem, term)
        table.add_row(term, gib(value), f"{100 * value / mem.total:.1f}%" if mem.total else "-")
    table.add_row("[bold]total[/bold]", f"[bold]{gib(mem.total)}[/bold]", "")
    verdict = "[green]fits[/green]" if mem.fits else "[red]does not fit[/red]"
    table.add_row("capacity", gib(mem.capacity), verdict)
    table.add_row("peak phase", mem.peak_phase, "")
    if mem.host_offload_per_node:
        table.add_row("CPU RAM per node", gib(mem.host_offload_per_node), "for --offload")
    table.add_row("allocated", gib(mem.allocated), "no overhead")
    return table


def strategy_line(strategy) -> str:
    s = strategy.model_dump()
    parts = [f"{s['workload']}", f"gpus={s['num_gpus']} (tp={s['tp']} pp={s['pp']} dp={s['dp']} ep={s['ep']})"]
    if s["workload"] == "serve":
        parts += [f"weights={s['weights']}", f"kv={s['kv_cache']}", f"concurrency={s['concurrency']}",
                  f"context={s['context']}"]
    else:
        parts += [f"precision={s['precision']}", f"zero={s['zero']}", f"optimizer={s['optimizer']}"
                  + (" (offload)" if s["offload"] else ""), f"checkpointing={s['checkpointing']}",
                  f"micro_batch={s['micro_batch']}", f"seq_len={s['seq_len']}", f"loss={s['loss']}"]
        if s["workload"] in ("lora", "qlora"):
            parts += [f"weights={s['weights']}", f"lora_rank={s['lora_rank']}"]
    return "  ".join(parts)


def speed_cost_table(result) -> Table:
    """Throughput and cost beside the memory table."""
    t, c = result.throughput, result.cost
    table = Table(title="Speed and cost", title_justify="left")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [("tokens/s (cluster)", f"{t.tokens_per_s:,.0f}")]
    if t.step_seconds is not None:
        rows += [("step seconds", f"{t.step_seconds:.3f}"),
                 ("  compute / communication", f"{t.compute_seconds:.3f} / {t.communication_seconds:.3f}"),
                 ("  bubble / offload", f"{t.bubble_seconds:.3f} / {t.offload_seconds:.3f}"),
                 ("MFU", f"{100 * t.mfu:.1f}%")]
    if t.ttft_seconds is not None:
        rows += [("time to first token", f"{t.ttft_seconds:.3f} s"),
                 ("time per output token", f"{1000 * t.tpot_seconds:.1f} ms")]
    rows += [("$ per hour (cluster)", f"{c.usd_per_hour:,.2f}"), ("purchase (capex)", f"${c.capex_usd:,.0f}")]
    if c.usd_total is not None:
        rows += [("job", f"{c.job_hours:,.1f} h, ${c.usd_total:,.0f}")]
    if result.workload == "serve" and c.usd_per_million_tokens is not None:
        rows += [("$ per million output tokens", f"{c.usd_per_million_tokens:.3f}")]
    for name, value in rows:
        table.add_row(name, value)
    return table

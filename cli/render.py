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
    table.caption = f"peak phase: {mem.peak_phase}; allocated (total - overhead): {gib(mem.allocated)} GiB"
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

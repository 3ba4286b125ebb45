"""`gpuplan plan` (also the `plan` console script) and `gpuplan sweep`: parse, call planner, render.

`plan --model qwen3-235b --gpus a100-80g` prints, for each workload (serve, qlora, lora, full,
pretrain), the cheapest cluster found by the CP-SAT planner with its strategy, per-GPU memory,
tokens/s and cost, then the detail of each plan (strategy and memory breakdown, as `estimate`).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click

from cli import options as opt
from planner.domains import OBJECTIVES, PLAN_DEFAULTS, restrictions
from planner.strategy import WORKLOADS, Strategy, StrategyError

# strategy flags that are plan parameters (with plan defaults) or plan's own repeatable option
NOT_PINS = ("workload", "seq_len", "context")
GIB = 2 ** 30


def _pin_options(fn):
    """estimate's strategy flags: here each one pins that choice (unset: the solver chooses)."""
    for flag, field, kind, text in reversed(opt.STRATEGY_FLAGS):
        if field in NOT_PINS:
            continue
        help_text = f"pin: {text}"
        if kind is None:
            fn = click.option(flag, field, default=None, help=help_text)(fn)
        else:
            fn = click.option(flag, field, type=kind, default=None, help=help_text)(fn)
    return fn


def _question_options(fn):
    """Workloads, objective, limits and the parameters every plan states (defaults per workload)."""
    d = PLAN_DEFAULTS
    specs = [
        click.option("--workload", "workloads", multiple=True, type=click.Choice(WORKLOADS),
                     help="repeatable [default: serve, qlora, lora, full, pretrain]"),
        click.option("--objective", type=click.Choice(OBJECTIVES), default="hourly", show_default=True,
                     help="hourly: $/h; job: $ for --tokens; capex: purchase price; gpus: fewest GPUs"),
        click.option("--seq-len", type=opt.POSITIVE, help=f"training sequence length [default: {d['full']['seq_len']}]"),
        click.option("--global-batch", type=opt.POSITIVE,
                     help=f"sequences per optimizer step [default: {d['full']['global_batch']}; "
                          f"pretrain {d['pretrain']['global_batch']}]"),
        click.option("--tokens", type=float, help=f"tokens of the job (--objective job, --deadline, --budget) "
                                                  f"[default: {d['full']['tokens']:g}; pretrain {d['pretrain']['tokens']:g}]"),
        click.option("--total-concurrency", type=opt.POSITIVE,
                     help=f"serving: sequences held at once by all replicas [default: {d['serve']['total_concurrency']}]"),
        click.option("--context", type=opt.POSITIVE, help=f"serving: tokens per sequence [default: {d['serve']['context']}]"),
        click.option("--min-throughput", type=float, help="tokens/s the cluster must reach"),
        click.option("--deadline", "deadline_hours", type=float, help="hours to process --tokens"),
        click.option("--budget", "budget_usd", type=float, help="USD cap on the job (--tokens)"),
        click.option("--max-hourly", "max_hourly_usd", type=float, help="USD/h cap"),
        click.option("--max-capex", "max_capex_usd", type=float, help="USD cap on the purchase price"),
        click.option("--time-limit", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
                     help="seconds per solve; past it the plan is FEASIBLE with its gap"),
        click.option("--all-choices", is_flag=True,
                     help="also search what the defaults leave out: pure bf16/fp8 training, 8-bit Adam, SGD, "
                          "fused loss, quantized serving weights, fp8 KV cache, every LoRA rank"),
    ]
    for spec in reversed(specs):
        fn = spec(fn)
    return fn


# --- parsing ------------------------------------------------------------------------------------

def parse_gpus(cat, text: str | None):
    """'a100-80g:16,h100:8' -> GPU allowances; a name without a count means as many as needed."""
    from planner.domains import GpuAllowance

    if not text:
        return [GpuAllowance(gpu=g) for g in cat.gpus.values()]
    out = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, count = item.partition(":")
        if sep and (not count.isdigit() or int(count) < 1):
            raise click.BadParameter(f"'{item}': expected NAME or NAME:COUNT with COUNT >= 1", param_hint="--gpus")
        out.append(GpuAllowance(gpu=cat.gpu(name), max_count=int(count) if sep else None))
    if not out:
        raise click.BadParameter("no GPU given", param_hint="--gpus")
    return out


def _pins_for(workload: str, pins: dict) -> dict:
    """The pins that make sense for this workload (e.g. --zero applies to training, not to serve)."""
    kept = {}
    for field, value in pins.items():
        try:
            Strategy(workload=workload, **{field: value})
            kept[field] = value
        except (StrategyError, ValueError):
            continue
    return kept


def build_instances(cat, model: str, gpus: str | None, workloads: tuple, flags: dict) -> list:
    """One planner Instance per workload; raises click.BadParameter / CatalogError on bad input."""
    from planner.domains import Instance, Limits

    arch = cat.model(model)
    allowances = parse_gpus(cat, gpus)
    pins = opt.pinned_fields({k: v for k, v in flags.items() if k not in NOT_PINS})
    limits = Limits(**{k: flags.get(k) for k in Limits.model_fields})
    chosen = list(workloads) or list(WORKLOADS)
    instances, unused = [], set(pins)
    for w in chosen:
        kept = _pins_for(w, pins)
        unused -= set(kept)
        fields = dict(PLAN_DEFAULTS[w])
        for key in ("seq_len", "global_batch", "tokens", "total_concurrency", "context"):
            if flags.get(key) is not None:
                fields[key] = flags[key]
        instances.append(Instance(model=arch, workload=w, gpus=tuple(allowances), catalog_gpus=tuple(cat.gpus.values()),
                                  objective=flags.get("objective") or "hourly", pins=kept, limits=limits,
                                  all_choices=bool(flags.get("all_choices")), **fields))
    if unused:
        raise click.BadParameter(f"--{sorted(unused)[0].replace('_', '-')} applies to none of the workloads "
                                 f"{', '.join(chosen)}")
    return instances


# --- rendering -------------------------------------------------------------------------------------

def _cluster(p) -> str:
    return f"{p.strategy.num_gpus} x {p.gpu}" if p.strategy else "-"


def key_strategy(s: Strategy) -> str:
    parts = [f"tp{s.tp} pp{s.pp} dp{s.dp}" + (f" ep{s.ep}" if s.ep > 1 else "")]
    if s.workload == "serve":
        parts += [f"{s.weight_format} weights", f"kv {s.kv_cache}", f"{s.concurrency} seq/replica"]
    else:
        parts += [s.precision, f"zero{s.zero}"] + (["offload"] if s.offload else [])
        parts += [f"ckpt {s.checkpointing}", f"mb{s.micro_batch}x{s.grad_accum}"]
        if s.loss == "fused":
            parts.append("fused loss")
        if s.is_peft:
            parts.append(f"{s.weight_format} r{s.lora_rank}")
    return ", ".join(parts)


def _status(p) -> str:
    s = p.solver
    if s.status == "FEASIBLE" and s.gap is not None:
        return f"FEASIBLE (gap {100 * s.gap:.1f}%)"
    return s.status


def _tokens(x: float) -> str:
    return f"{x:.0e}".replace("e+0", "e").replace("e+", "e") if x >= 1e5 else f"{x:,.0f}"


def _money(x) -> str:
    return "-" if x is None else (f"${x:,.2f}" if x < 1000 else f"${x:,.0f}")


def defaults_text(instances) -> str:
    w = {i.workload: i for i in instances}
    lines = []
    train = [i for i in instances if i.is_training]
    if train:
        i = train[0]
        batches = ", ".join(sorted({f"{t.global_batch} ({t.workload})" for t in train}))
        tokens = ", ".join(sorted({f"{_tokens(t.tokens)} ({t.workload})" for t in train}))
        lines.append(f"training: sequence length {i.seq_len}, global batch in sequences {batches}; job tokens {tokens}")
    if "serve" in w:
        s = w["serve"]
        lines.append(f"serving: {s.total_concurrency} concurrent sequences of {s.context} tokens in total over the "
                     f"replicas; job tokens {_tokens(s.tokens)}")
    narrowed: dict[str, list[str]] = {}
    for i in instances:
        for r in restrictions(i):
            if r.kind == "default":
                narrowed.setdefault(r.text.removesuffix(" (default)"), []).append(i.workload)
    if narrowed:
        lines.append("default choices (a pin or --all-choices widens them): " + "; ".join(
            f"{text} ({', '.join(ws)})" for text, ws in narrowed.items()))
    lines.append("usable memory: training, all of the GPU's memory with the overhead term (CUDA context, NCCL "
                 "buffers, 8% allocator fragmentation) counted in the total; serving, 90% of it (vLLM "
                 "gpu_memory_utilization). The solver rounds memory up to MiB, so every plan also fits by `estimate`.")
    return "\n".join(lines)


def summary_table(plans, title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col, just in (("workload", "left"), ("cluster", "left"), ("strategy", "left"), ("memory / GPU", "right"),
                      ("tokens/s", "right"), ("$/h", "right"), ("job", "right"), ("status", "left")):
        table.add_column(col, justify=just)
    for p in plans:
        if p.strategy is None:
            table.add_row(p.workload, "-", "does not fit (see below)" if p.solver.diagnosis else "-", "-", "-",
                          "-", "-", _status(p))
            continue
        mem = f"{p.memory.total / GIB:.1f} / {p.memory.capacity / GIB:.1f} GiB"
        tps = p.throughput.tokens_per_s
        job = _money(p.cost.usd_total)
        if p.cost.job_hours is not None:
            job += f" ({p.cost.job_hours:,.1f} h)"
        label = p.workload if p.rank == 1 else f"{p.workload} #{p.rank}"
        table.add_row(label, _cluster(p), key_strategy(p.strategy), mem, f"{tps:,.0f}", _money(p.cost.usd_per_hour),
                      job, _status(p))
    return table


def render_detail(out, p) -> None:
    from cli.render import memory_table, speed_cost_table, strategy_line

    s = p.solver
    head = f"[bold]{p.workload}[/bold]" + (f" #{p.rank}" if p.rank > 1 else "")
    if p.strategy is None:
        out.print(f"\n{head}: {s.status} after {s.seconds:.2f} s")
        if s.diagnosis:
            out.print(s.diagnosis.summary)
            for fix in s.diagnosis.fixes[1:]:
                out.print(f"  or {fix.text}")
        return
    verdict = {"OPTIMAL": "proved optimal", "FEASIBLE": f"best found, bound {s.bound:g} {s.unit}"}.get(s.status, s.status)
    out.print(f"\n{head}: {_cluster(p)}, {s.value:g} {s.unit} ({verdict} in {s.seconds:.2f} s)")
    out.print(strategy_line(p.strategy))
    out.print(memory_table(p.memory))
    out.print(speed_cost_table(p))


# --- commands ----------------------------------------------------------------------------------------

def _common(fn):
    fn = click.option("--json", "as_json", is_flag=True, help='print one JSON document {"plans": [...]}')(fn)
    fn = opt.price_option(fn)
    fn = click.option("--catalog", "catalog_file", type=click.Path(path_type=Path),
                      help="extra catalog TOML (add GPUs/models, override prices)")(fn)
    return fn


@click.command()
@click.option("--model", required=True, help="catalog name/alias or path to a config.json")
@click.option("--gpus", required=True, help="allowed GPUs with optional counts, e.g. a100-80g:16,h100:8 "
                                            "(no count: as many as needed, up to 512)")
@click.option("--top", type=click.IntRange(1, 20), default=1, show_default=True,
              help="the K best distinct configurations per workload")
@_common
@_question_options
@_pin_options
def plan(model, gpus, top, catalog_file, prices, as_json, time_limit, **flags):
    """The cheapest cluster and configuration for each workload, proved by CP-SAT (or diagnosed)."""
    from planner.solve_plan import plan as solve

    cat = opt.load_catalog_with_prices(catalog_file, prices)
    workloads = flags.pop("workloads")
    instances = build_instances(cat, model, gpus, workloads, flags)
    plans = [p for inst in instances for p in solve(inst, top=top, time_limit=time_limit)]
    if as_json:
        click.echo(json.dumps({"plans": [p.model_dump(mode="json") for p in plans]}, indent=2))
        return
    from cli.render import console

    out = console()
    inst = instances[0]
    gpu_text = ", ".join(f"{a.gpu.name}" + (f" (up to {a.max_count})" if a.max_count else "") for a in inst.gpus)
    out.print(f"[bold]{inst.model.name}[/bold] ({plans[0].model.params_total:,} parameters, "
              f"{plans[0].model.params_active:,} active) on {gpu_text}; objective: {inst.objective}")
    out.print(defaults_text(instances))
    out.print(summary_table(plans, "Cheapest plan per workload"))
    for p in plans:
        render_detail(out, p)


@click.command()
@click.option("--model", "models", multiple=True, help="repeatable [default: every Qwen3 size]")
@click.option("--gpus", default=None, help="GPUs to compare, e.g. a100-80g,h100:8 [default: every catalog GPU]")
@click.option("--csv", "as_csv", is_flag=True, help="print CSV rows instead of a table")
@click.option("--jobs", type=opt.POSITIVE, default=None, help="processes [default: CPU count]")
@_common
@_question_options
def sweep(models, gpus, as_csv, jobs, catalog_file, prices, as_json, time_limit, **flags):
    """For each model, GPU and workload: the cheapest plan (one CP-SAT model per cell)."""
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed


    cat = opt.load_catalog_with_prices(catalog_file, prices)
    workloads = flags.pop("workloads") or WORKLOADS
    archs = [cat.model(m) for m in models] if models else cat.qwen3_models()
    allowances = parse_gpus(cat, gpus)
    for arch in archs:   # bad flags fail here, once, before any process starts
        build_instances(cat, arch.name, _gpu_text(allowances[0]), tuple(workloads), flags)
    cells = [(arch.name, _gpu_text(a), w) for arch in archs for a in allowances for w in workloads]
    rows = {}
    from rich.progress import Progress

    with Progress(transient=True, disable=as_json or as_csv or not sys.stderr.isatty()) as progress, \
            ProcessPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        task = progress.add_task("planning", total=len(cells))
        futures = {pool.submit(_sweep_cell, catalog_file, prices, cell, flags, time_limit): cell
                   for cell in cells}
        for future in as_completed(futures):
            rows[futures[future]] = future.result()
            progress.advance(task)
    ordered = [rows[cell] for cell in cells]
    if as_json:
        click.echo(json.dumps({"cells": ordered}, indent=2))
        return
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(ordered[0]))
        writer.writeheader()
        writer.writerows(ordered)
        return
    from rich.table import Table

    from cli.render import console
    table = Table(title=f"Cheapest plan per model, GPU and workload (objective: {flags.get('objective')}); "
                        "cell: GPUs, $/h, tokens/s", title_justify="left")
    table.add_column("model")
    table.add_column("gpu")
    for w in workloads:
        table.add_column(w, justify="right")
    for arch in archs:
        for a in allowances:
            texts = []
            for w in workloads:
                r = rows[(arch.name, _gpu_text(a), w)]
                texts.append("-" if r["num_gpus"] is None else
                             f"{r['num_gpus']} x, {_money(r['usd_per_hour'])}, {r['tokens_per_s']:,.0f}")
            table.add_row(arch.name, a.gpu.name, *texts)
    console().print(table)


def _sweep_cell(catalog_file, prices: tuple, cell: tuple, flags: dict, time_limit: float) -> dict:
    """One cell, in a worker process: its cheapest plan (no diagnosis: a sweep reports the status)."""
    from planner.solve_plan import plan as solve

    model, gpus, workload = cell
    cat = opt.load_catalog_with_prices(catalog_file, prices)
    inst = build_instances(cat, model, gpus, (workload,), flags)[0]
    p = solve(inst, top=1, time_limit=time_limit, workers=2, diagnose_infeasible=False)[0]
    return _sweep_row(model, inst.gpus[0].gpu.name, p)


def _gpu_text(a) -> str:
    return a.gpu.name + (f":{a.max_count}" if a.max_count else "")


def _sweep_row(model: str, gpu: str, p) -> dict:
    s = p.strategy
    return {"model": model, "gpu": gpu, "workload": p.workload, "status": p.solver.status,
            "num_gpus": s.num_gpus if s else None, "strategy": key_strategy(s) if s else None,
            "usd_per_hour": p.cost.usd_per_hour if s else None,
            "tokens_per_s": p.throughput.tokens_per_s if s else None,
            "usd_total": p.cost.usd_total if s else None,
            "memory_gib": round(p.memory.total / GIB, 2) if s else None, "seconds": round(p.solver.seconds, 3)}


"""`gpuplan`: estimate, trace, plan, sweep, models, gpus. Parses, calls planner, renders."""

from __future__ import annotations

import json
import sys

import click
from pydantic import ValidationError

from catalog import CatalogError
from cli import options as opt
from planner.strategy import StrategyError

EXIT_BAD_INPUT = 2


def _fail(message: str) -> None:
    click.echo(f"gpuplan: error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def gpuplan():
    """Find the cheapest GPU cluster that can train, fine-tune or serve an LLM, and prove it."""


@gpuplan.command()
@opt.common_options
@click.option("--gpu", required=True, help="GPU name or alias (see `gpuplan gpus`)")
@click.option("--tokens", type=click.FloatRange(min=0, min_open=True), default=None,
              help="training tokens of the job, for its duration and price (e.g. 1e9)")
@opt.price_option
@opt.strategy_options()
def estimate(model, catalog_file, as_json, gpu, tokens, prices, **flags):
    """Evaluate one fully specified configuration: per-GPU memory by term, speed and cost."""
    from planner.estimate import estimate as run_estimate

    from cli.render import console, memory_table, speed_cost_table, strategy_line

    cat = opt.load_catalog_with_prices(catalog_file, prices)
    arch, spec = cat.model(model), cat.gpu(gpu)
    result = run_estimate(arch, spec, opt.build_strategy(flags), tokens=tokens)
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    out = console()
    out.print(f"[bold]{arch.name}[/bold] on {spec.display}: {result.model.params_total:,} parameters "
                  f"({result.model.params_active:,} active)")
    out.print(strategy_line(result.strategy))
    out.print(memory_table(result.memory))
    out.print(speed_cost_table(result))


@gpuplan.command()
@opt.common_options
@click.option("--layers", type=opt.POSITIVE, default=None,
              help="decoder layers to build (fewer keeps the CPU trace small) [default: all]")
@opt.strategy_options()
def trace(model, catalog_file, as_json, layers, **flags):
    """Measure PyTorch's peak allocation on the CPU (needs the `trace` extra) and compare with estimate."""
    from planner import trace as tracing
    from planner.memory import estimate_memory

    cat = opt.load_catalog_with_prices(catalog_file)
    arch = cat.model(model)
    strategy = opt.build_strategy(flags)
    try:
        measured = tracing.trace(arch, strategy, num_layers=layers)
    except tracing.TraceUnsupported as e:
        _fail(str(e))
    except ImportError as e:
        _fail(f"trace needs the optional extra: pip install 'gpuplan[trace]' ({e.name} missing)")
    reduced = arch.model_copy(update={"num_hidden_layers": measured.layers})
    spec = cat.gpu("h100")  # capacity only matters for `fits`; the allocation does not depend on it
    predicted = estimate_memory(reduced, spec, strategy)
    out = {"model": arch.name, "layers": measured.layers, "trace": measured.model_dump(),
           "estimate": {"allocated": predicted.allocated, "peak_phase": predicted.peak_phase,
                        **{t: getattr(predicted, t) for t in ("weights", "gradients", "optimizer",
                                                              "activations", "kv_cache")}},
           "error": predicted.allocated / measured.peak_bytes - 1}
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    from rich.table import Table

    from cli.render import console, gib
    table = Table(title=f"{arch.name} ({measured.layers} layers): traced vs estimated, GiB per GPU")
    for col in ("term", "trace", "estimate"):
        table.add_column(col, justify="right" if col != "term" else "left")
    for term in ("weights", "gradients", "optimizer", "activations", "kv_cache"):
        table.add_row(term, gib(measured.by_category.get(term, 0)), gib(out["estimate"][term]))
    table.add_row("allocated", gib(measured.peak_bytes), gib(predicted.allocated))
    table.caption = (f"peak phase: trace {measured.peak_phase}, estimate {predicted.peak_phase}; "
                     f"error {100 * out['error']:+.1f}%")
    console().print(table)


@gpuplan.command()
@click.option("--all", "show_all", is_flag=True, help="also list the reference (non-Qwen3) models")
@click.option("--catalog", "catalog_file", type=click.Path(), default=None)
@click.option("--json", "as_json", is_flag=True)
def models(show_all, catalog_file, as_json):
    """List the catalog models with exact parameter counts."""
    from rich.table import Table

    from cli.render import console
    from planner.params import count_params

    cat = opt.load_catalog_with_prices(catalog_file)
    chosen = list(cat.models.values()) if show_all else cat.qwen3_models()
    rows = [{"name": m.name, "aliases": list(m.aliases), "params_total": count_params(m).total,
             "params_active": count_params(m).active, "layers": m.num_hidden_layers,
             "hidden": m.hidden_size, "heads": f"{m.num_attention_heads}/{m.num_key_value_heads}",
             "experts": f"{m.num_experts_per_tok}/{m.num_experts}" if m.is_moe else "-"} for m in chosen]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="Models")
    for col in ("name", "aliases", "params_total", "params_active", "layers", "hidden", "heads", "experts"):
        table.add_column(col, justify="right" if col.startswith("params") else "left")
    for r in rows:
        table.add_row(r["name"], ", ".join(r["aliases"]), f"{r['params_total']:,}", f"{r['params_active']:,}",
                      str(r["layers"]), str(r["hidden"]), r["heads"], r["experts"])
    console().print(table)


@gpuplan.command()
@click.option("--catalog", "catalog_file", type=click.Path(), default=None)
@click.option("--json", "as_json", is_flag=True)
def gpus(catalog_file, as_json):
    """List the catalog GPUs with memory, speed and prices."""
    from rich.table import Table

    from cli.render import console
    cat = opt.load_catalog_with_prices(catalog_file)
    if as_json:
        click.echo(json.dumps([g.model_dump() for g in cat.gpus.values()], indent=2))
        return
    table = Table(title="GPUs (prices are dated estimates; see `--json` for sources)")
    for col in ("name", "aliases", "GiB", "BF16 TF", "FP8 TF", "HBM GB/s", "per node", "$/h", "$ buy"):
        table.add_column(col)
    for g in cat.gpus.values():
        table.add_row(g.name, ", ".join(g.aliases[:3]), f"{g.memory_bytes / 2**30:.1f}",
                      f"{g.bf16_tflops:g}" if g.bf16_tflops else "-", f"{g.fp8_tflops:g}" if g.fp8_tflops else "-",
                      f"{g.hbm_gbps:g}", str(g.gpus_per_node), f"{g.price_hourly.usd:.2f}",
                      f"{g.price_purchase.usd:,.0f}")
    console().print(table)


def _register_planning_commands() -> None:
    from cli.plan_cmd import plan, sweep

    gpuplan.add_command(plan)
    gpuplan.add_command(sweep)


_register_planning_commands()


def _run(command, args=None) -> None:
    """Run a click command with one-line errors: no usage dump, no traceback, exit 2."""
    try:
        command.main(args=args, standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        _fail("aborted")
    except click.ClickException as e:
        _fail(e.format_message().replace("\n", " "))
    except (CatalogError, StrategyError) as e:
        _fail(str(e))
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "strategy"
        _fail(f"{where}: {err['msg']}".replace("Value error, ", ""))


def main() -> None:
    _run(gpuplan)


def plan_main() -> None:
    """`plan ...` is `gpuplan plan ...`."""
    _run(gpuplan, ["plan", *sys.argv[1:]])


if __name__ == "__main__":
    main()

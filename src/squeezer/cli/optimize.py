"""``squeezer optimize``: the accuracy-gated search for the fastest runtime."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from squeezer.cli.app import app, parse_device, parse_objective, parse_task


@app.command()
def optimize(
    path: Annotated[str, typer.Argument(help="Model folder, package:MODULE or cached hub id.")],
    task: Annotated[
        str | None, typer.Option(help="embed or classify. [default: the model's main task]")
    ] = None,
    max_loss: Annotated[
        float,
        typer.Option(
            help="Accuracy budget: 1 - min cosine (embed) or 1 - top-1 agreement (classify)."
        ),
    ] = 0.01,
    out: Annotated[
        Path | None, typer.Option(help="Artifact folder. [default: optimized/<model>]")
    ] = None,
    texts: Annotated[
        Path | None,
        typer.Option(help="Text file, one text per line. [default: Python's pydoc corpus]"),
    ] = None,
    objective: Annotated[
        str,
        typer.Option(
            help="throughput (sentences/s in batches of 32) or latency (one short sentence)."
        ),
    ] = "throughput",
    per_split: Annotated[int, typer.Option(help="Texts in each of the three splits.")] = 256,
    only: Annotated[
        list[str] | None,
        typer.Option(help="Only candidates whose name starts with this (repeatable)."),
    ] = None,
    speed_budget: Annotated[float, typer.Option(help="Seconds of timing per candidate.")] = 4.0,
    time_budget: Annotated[
        float,
        typer.Option(
            help="Seconds for the whole search; candidates not built by then are skipped "
            "(0 = no limit)."
        ),
    ] = 1800.0,
    threads: Annotated[int, typer.Option(help="Compute threads; 0 = one per core.")] = 0,
    keep_candidates: Annotated[
        bool, typer.Option(help="Keep every candidate's files under OUT/.candidates.")
    ] = False,
    device: Annotated[
        str,
        typer.Option(help="Where to search: auto, cpu, cuda or cuda:N (a GPU adds fp16/bf16)."),
    ] = "auto",
) -> None:
    """Find the fastest runtime and precision within an accuracy budget; write an artifact.

    Exit status: 0 when an optimized candidate met the budget, 3 when none did and the
    artifact is the fp32 reference, 1 on errors."""
    from rich.console import Console

    from squeezer.backends.device import configure_threads
    from squeezer.errors import SqueezerError
    from squeezer.optimize import report
    from squeezer.optimize.progress import SearchProgress
    from squeezer.optimize.search import OptimizeSettings, Search
    from squeezer.optimize.select import EXIT_FALLBACK

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    configure_threads(threads)
    console = Console(stderr=True)
    name = Path(path.removeprefix("package:")).name or "model"
    settings = OptimizeSettings(
        model=path,
        out=out or Path("optimized") / name,
        task=parse_task(task) if task else None,
        max_loss=max_loss,
        objective=parse_objective(objective),
        texts=texts,
        per_split=per_split,
        only=tuple(only or ()),
        speed_budget_s=speed_budget,
        time_budget_s=time_budget,
        keep_candidates=keep_candidates,
        device=parse_device(device),
    )
    try:
        with SearchProgress(console, time_budget) as progress:
            search = Search(settings, progress.update)
            progress.start(len(search.candidates()[0]))
            result = search.run()
    except (SqueezerError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from e
    written = report.write(result)
    console.print(report.table(result))
    m = result.manifest
    console.print(
        f"chose {m.candidate}: loss {m.accuracy['loss']:.4g} on the report split, "
        f"{m.speed['throughput']:.1f} sentences/s; wrote {settings.out} "
        f"({', '.join(p.name for p in written)})"
    )
    if not m.within_budget:
        console.print(
            f"[yellow]no optimized candidate met --max-loss {max_loss:g}: "
            "the artifact is the fp32 reference[/yellow]"
        )
        raise typer.Exit(EXIT_FALLBACK)

"""``squeezer optimize``: the accuracy-gated search for the fastest runtime."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from squeezer.cli.app import app, parse_device, parse_objective, parse_task

if TYPE_CHECKING:
    from rich.console import Console

    from squeezer.optimize.generation_search import GenerationSettings


@app.command()
def optimize(
    path: Annotated[str, typer.Argument(help="Model folder, package:MODULE or cached hub id.")],
    task: Annotated[
        str | None,
        typer.Option(
            help="embed, classify or generate (a causal LM). [default: the model's main task]"
        ),
    ] = None,
    max_loss: Annotated[
        float,
        typer.Option(
            help="Accuracy budget: 1 - min cosine (embed), 1 - top-1 agreement (classify), "
            "or mean KL(fp32 || candidate) per token (generate)."
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
            help="throughput (sentences/s in batches of 32; generate: tok/s at --max-num-seqs "
            "streams) or latency (one short sentence; generate: one stream's ms per token)."
        ),
    ] = "throughput",
    per_split: Annotated[
        int | None,
        typer.Option(help="Texts in each of the three splits. [default: 256; generate: 16]"),
    ] = None,
    new_tokens: Annotated[
        int, typer.Option(help="Generate: greedy tokens per prompt the gate compares.")
    ] = 32,
    max_num_seqs: Annotated[
        int, typer.Option(help="Generate: streams decoding together for the throughput figure.")
    ] = 32,
    gguf: Annotated[
        Path | None,
        typer.Option(
            help="Generate: the GGUF file of the llama.cpp candidate. [default: the file the "
            "model was converted from, or the one in its folder]"
        ),
    ] = None,
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
    resolved = parse_device(device)  # a usage error (exit 2) before the model is read
    if _generates(path, task, console):
        from squeezer.optimize.generation_search import GenerationSettings

        _optimize_generation(
            GenerationSettings(
                model=path,
                out=out or Path("optimized") / name,
                max_loss=max_loss,
                objective=parse_objective(objective),
                texts=texts,
                per_split=per_split or 16,
                new_tokens=new_tokens,
                max_num_seqs=max_num_seqs,
                only=tuple(only or ()),
                speed_budget_s=speed_budget,
                time_budget_s=time_budget,
                gguf=gguf,
                device=resolved,
            ),
            console,
        )
        return
    settings = OptimizeSettings(
        model=path,
        out=out or Path("optimized") / name,
        task=parse_task(task) if task else None,
        max_loss=max_loss,
        objective=parse_objective(objective),
        texts=texts,
        per_split=per_split or 256,
        only=tuple(only or ()),
        speed_budget_s=speed_budget,
        time_budget_s=time_budget,
        keep_candidates=keep_candidates,
        device=resolved,
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


def _generates(path: str, task: str | None, console: Console) -> bool:
    """Whether to run the generation search: asked for, or the model is a causal LM."""
    from squeezer.errors import SqueezerError
    from squeezer.models import locate, read_folder
    from squeezer.optimize.generation_search import is_causal_lm
    from squeezer.types import Task

    if task is not None:
        return parse_task(task) is Task.GENERATE
    try:
        return is_causal_lm(read_folder(locate(path)))
    except SqueezerError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from e


def _optimize_generation(settings: GenerationSettings, console: Console) -> None:
    """The causal-LM search (``optimize.generation_search``), its report and exit status."""
    from squeezer.errors import SqueezerError
    from squeezer.optimize import generation_report
    from squeezer.optimize.generation_search import GenerationSearch
    from squeezer.optimize.progress import SearchProgress
    from squeezer.optimize.select import EXIT_FALLBACK

    if settings.device != "cpu":
        console.print("[red]error:[/red] the generation search runs on cpu only for now")
        raise typer.Exit(1)
    try:
        with SearchProgress(console, settings.time_budget_s) as progress:
            search = GenerationSearch(settings, progress.update)
            found, _ = search.candidates()
            progress.start(len(found))
            result = search.run()
    except (SqueezerError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from e
    written = generation_report.write(result)
    console.print(generation_report.table(result))
    m = result.manifest
    console.print(
        f"chose {m.candidate}: mean KL {m.accuracy['loss']:.3g} on the report split, "
        f"{m.speed['one_stream']:.1f} tok/s one stream, {m.speed['throughput']:.1f} tok/s at "
        f"{settings.max_num_seqs} streams; wrote {settings.out} "
        f"({', '.join(p.name for p in written)}). Serve it: squeezer serve --model "
        f"NAME={settings.out}"
    )
    if not m.within_budget:
        console.print(
            f"[yellow]no optimized candidate met --max-loss {settings.max_loss:g}: "
            "the artifact is the fp32 reference[/yellow]"
        )
        raise typer.Exit(EXIT_FALLBACK)

"""``squeezer bench`` and ``squeezer profile``: load tests and latency/memory curves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from squeezer.cli.app import app


@app.command()
def bench(
    target: Annotated[
        str | None,
        typer.Argument(
            help="A server URL with its route (http://127.0.0.1:8080/embed, .../v1/embeddings, "
            ".../predict, .../v1/chat/completions, .../generate_stream, ...), or a model path "
            "to measure in-process without HTTP. Omit with --compare."
        ),
    ] = None,
    concurrency: Annotated[
        str, typer.Option(help="Closed loop: connections per level, comma-separated.")
    ] = "1,2,4,8,16,32,64",
    rate: Annotated[
        str | None,
        typer.Option(
            help="Open loop instead: Poisson arrivals per second per level, e.g. 20,40,80."
        ),
    ] = None,
    duration: Annotated[float, typer.Option(help="Seconds per level.")] = 10.0,
    warmup: Annotated[
        float, typer.Option(help="Seconds of unmeasured load before each level.")
    ] = 2.0,
    requests: Annotated[
        int | None, typer.Option(help="At most this many requests per level.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Load generator processes; 0 = min(cores, 4).")] = 0,
    texts: Annotated[
        Path | None,
        typer.Option(
            help="Texts, one per line. Default: English from Python's pydoc topics.", exists=True
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Inputs per request.")] = 1,
    lengths: Annotated[
        str, typer.Option(help="Input words: corpus, fixed:N or uniform:A-B.")
    ] = "corpus",
    model: Annotated[str | None, typer.Option(help="`model` field for OpenAI routes.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Generation: tokens per response.")] = 64,
    ignore_eos: Annotated[
        bool, typer.Option(help="Generation: ask for exactly --max-tokens tokens.")
    ] = True,
    route: Annotated[
        str, typer.Option(help="In-process runs: /embed or /predict work.")
    ] = "/embed",
    out: Annotated[Path | None, typer.Option(help="Write OUT.json and OUT.png.")] = None,
    compare: Annotated[
        list[Path] | None,
        typer.Option(help="Earlier JSON results to draw beside this run (repeatable)."),
    ] = None,
    ceiling: Annotated[
        bool, typer.Option(help="Also measure the generator against a no-op server.")
    ] = True,
    allow_remote: Annotated[
        bool, typer.Option(help="Allow a target that is not this machine.")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds a request may wait for its next byte before it counts as failed."
        ),
    ] = 60.0,
) -> None:
    """Load-test a server or an in-process model; table, JSON and latency/throughput PNG."""
    from rich.console import Console

    from squeezer.bench import report
    from squeezer.bench.run import BenchSettings, LevelProgress, RemoteTargetError, run_bench
    from squeezer.bench.workload import WorkloadSpec

    console = Console()
    earlier = [(p.stem, report.read_json(p)) for p in compare or []]
    if target is None:
        if not earlier:
            raise typer.BadParameter("give a TARGET, or --compare with result files")
        if out is None:
            raise typer.BadParameter("--compare without a TARGET needs --out for the chart")
        report.plot(earlier, out.with_suffix(".png"))
        console.print(f"wrote {out.with_suffix('.png')}")
        return
    try:
        settings = BenchSettings(
            target=target,
            concurrency=tuple(int(c) for c in concurrency.split(",") if c.strip()),
            rates=tuple(float(r) for r in rate.split(",") if r.strip()) if rate else (),
            duration_s=duration,
            warmup_s=warmup,
            max_requests=requests,
            workers=workers,
            texts=texts,
            workload=WorkloadSpec(
                batch_size=batch_size,
                lengths=lengths,
                model=model,
                max_tokens=max_tokens,
                ignore_eos=ignore_eos,
            ),
            route=route,
            allow_remote=allow_remote,
            ceiling=ceiling,
            timeout_s=timeout,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    try:
        with LevelProgress(console) as progress:
            result = run_bench(settings, progress.level)
    except (RemoteTargetError, ValueError) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from e
    console.print(report.table(result))
    if out is not None:
        report.write_json(result, out.with_suffix(".json"))
        report.plot([(out.stem, result.to_json()), *earlier], out.with_suffix(".png"))
        console.print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


@app.command()
def profile(
    path: Annotated[str, typer.Argument(help="Model folder, package:MODULE or cached hub id.")],
    backend: Annotated[
        list[str] | None, typer.Option(help="Runtime to profile (repeatable). [default: torch]")
    ] = None,
    seq_lengths: Annotated[str, typer.Option(help="Sequence lengths, comma-separated.")] = (
        "16,32,64,128,256"
    ),
    batch_sizes: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,4,16,32",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16.")] = "auto",
    repeats: Annotated[int, typer.Option(help="Timed passes per shape.")] = 5,
    target_latency_ms: Annotated[
        float, typer.Option(help="Latency per batch the recommendation keeps under.")
    ] = 50.0,
    memory_budget: Annotated[
        float | None, typer.Option(help="MB of memory growth per batch allowed.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output prefix. [default: profile-results/<model>]")
    ] = None,
) -> None:
    """Latency and peak memory over lengths x batch sizes; recommends --max-batch-tokens."""
    from rich.console import Console

    from squeezer.bench.profile import ProfileSettings, run_profile, table, write_outputs

    settings = ProfileSettings(
        path=path,
        backends=tuple(backend or ["torch"]),
        seq_lengths=tuple(int(x) for x in seq_lengths.split(",") if x.strip()),
        batch_sizes=tuple(int(x) for x in batch_sizes.split(",") if x.strip()),
        device=device,
        dtype=dtype,
        repeats=repeats,
        target_latency_ms=target_latency_ms,
        memory_budget_mb=memory_budget,
    )
    console = Console()
    result = run_profile(settings)
    console.print(table(result))
    name = Path(path.removeprefix("package:")).name or "model"
    written = write_outputs(result, out or Path("profile-results") / name)
    for rec in result.recommendations:
        console.print(f"recommended for {rec.backend}: squeezer serve {rec.flag}  ({rec.why})")
    console.print("wrote " + ", ".join(str(p) for p in written))

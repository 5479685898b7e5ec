"""``squeezer batch``: offline inference over a file, resumable, without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from squeezer.cli.app import app, parse_task


@app.command()
def batch(
    input: Annotated[
        Path, typer.Argument(help="JSONL, CSV or Parquet rows, or an OpenAI batch file.")
    ],
    output: Annotated[Path, typer.Option(help="The results: .jsonl, or .parquet (task jobs).")],
    model: Annotated[
        list[str],
        typer.Option(help="NAME[:VERSION]=SOURCE or SOURCE, as serve takes it (repeatable)."),
    ],
    task: Annotated[
        str | None,
        typer.Option(help="embed, classify, rerank or generate (not for OpenAI batch files)."),
    ] = None,
    format: Annotated[
        str | None, typer.Option(help="jsonl, csv, parquet or openai (default: from the file).")
    ] = None,
    text_column: Annotated[str, typer.Option(help="The column holding each row's text.")] = "text",
    pair_column: Annotated[
        str | None, typer.Option(help="A second text column: (text, pair) rows.")
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option(help="The column of unique row ids (default: the row's index)."),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="generate: tokens per row.")] = 256,
    truncate: Annotated[bool, typer.Option(help="Truncate texts longer than the model.")] = False,
    max_errors: Annotated[
        int | None, typer.Option(help="Stop after this many error rows (default: never).")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Discard the parts of another job at --output.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16")] = "auto",
    backend: Annotated[str, typer.Option(help="The runtime, as serve takes it.")] = "torch",
    max_num_seqs: Annotated[int, typer.Option(help="Generation sequences at once.")] = 32,
    max_total_tokens: Annotated[int, typer.Option(help="Prompt + new tokens per row.")] = 2048,
    window: Annotated[int, typer.Option(help="Rows in flight at once.")] = 256,
    part_size: Annotated[
        int, typer.Option(help="Rows per committed part: what a crash can lose at most.")
    ] = 512,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    ray: Annotated[
        bool, typer.Option("--ray", help="Run on Ray Data (pip install 'squeezer[ray]').")
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="A running Ray cluster (default: a local Ray).")
    ] = None,
    actors: Annotated[int, typer.Option(help="--ray: actors, each with its own models.")] = 1,
    cpus_per_actor: Annotated[float, typer.Option(help="--ray: CPUs per actor.")] = 1.0,
    gpus_per_actor: Annotated[float, typer.Option(help="--ray: GPUs per actor.")] = 0.0,
) -> None:
    """Run every row through a model and write the results; rerun to resume.

    Results are committed in parts as rows finish; after a crash (SIGKILL included) the
    same command skips the rows already committed, and the output holds each row once.
    A rerun with another model, parameters or input is refused unless --force. With
    --ray the job runs on Ray Data, with the same output and resume."""
    from squeezer.batch.job import BatchJob, run_batch
    from squeezer.batch.rows import InputFormat
    from squeezer.batch.work import TaskOptions
    from squeezer.config import Settings, parse_model_arg
    from squeezer.errors import SqueezerError

    try:
        fmt = InputFormat(format) if format else InputFormat.of(input)
        if (fmt is InputFormat.OPENAI) != (task is None):
            raise typer.BadParameter(
                "--task is for rows of text; an OpenAI batch file names its route per line"
            )
        settings = Settings(
            models=[parse_model_arg(m) for m in model],
            device=device,
            dtype=dtype,  # type: ignore[arg-type]
            backend=backend,
            max_num_seqs=max_num_seqs,
            max_total_tokens=max_total_tokens,
            max_concurrent_requests=max(window, 512),
            warmup=False,
        )
    except (ValueError, SqueezerError) as e:
        raise typer.BadParameter(str(e)) from e
    options = None
    if task is not None:
        options = TaskOptions(
            parse_task(task),
            text_column=text_column,
            pair_column=pair_column,
            truncate=truncate,
            max_new_tokens=max_new_tokens,
        )
    job = BatchJob(
        input=input,
        output=output,
        settings=settings,
        format=fmt,
        options=options,
        model=settings.models[0].name if options is not None else None,
        id_column=id_column,
        window=window,
        part_size=part_size,
        max_errors=max_errors,
        force=force,
        progress=progress,
    )
    try:
        if ray:
            from squeezer.batch.ray_job import run_batch_ray

            report = run_batch_ray(
                job,
                actors=actors,
                cpus_per_actor=cpus_per_actor,
                gpus_per_actor=gpus_per_actor,
                address=ray_address,
            )
        else:
            report = run_batch(job)
    except SqueezerError as e:
        typer.echo(f"squeezer batch: {e.message}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"{report.rows} rows ({report.resumed} resumed), {report.errors} errors, "
        f"{report.rows_per_s:.1f} rows/s; report: {output}.report.json"
    )
    if report.stopped_early:
        typer.echo(f"stopped after {report.errors} errors (--max-errors)", err=True)
        raise typer.Exit(1)

"""``squeezer pin``: record a model version's golden outputs, or check a version
against them, without a server (a deployment pipeline gates on the exit status)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from squeezer.cli.app import app, task_pair


@app.command()
def pin(
    model: Annotated[
        str, typer.Argument(help="NAME[:VERSION]=PATH, or a PATH (what --model takes)")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Write the lockfile here (record the outputs).")
    ] = None,
    check: Annotated[
        Path | None,
        typer.Option(help="Compare with this lockfile; exit 1 on drift.", exists=True),
    ] = None,
    drift_tolerance: Annotated[
        list[str] | None,
        typer.Option(help="TASK=LOSS: the largest loss that passes (repeatable)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16")] = "auto",
    backend: Annotated[str, typer.Option(help="The runtime, as serve takes it.")] = "torch",
) -> None:
    """Record golden outputs on held-out text (--out), or check against them (--check).

    The lockfile holds each task's inputs and outputs, the fingerprint and the library
    versions. A served version with a lockfile (its ``lockfile`` setting, or
    ``squeezer.lock.json`` in its folder) is checked the same way at every load."""
    import asyncio

    from squeezer.config import Settings, parse_model_arg
    from squeezer.errors import SqueezerError

    if (out is None) == (check is None):
        raise typer.BadParameter("give exactly one of --out and --check")
    tolerances = dict(task_pair(arg, "--drift-tolerance") for arg in drift_tolerance or [])
    try:
        settings = Settings(
            models=[parse_model_arg(model)],
            device=device,
            dtype=dtype,  # type: ignore[arg-type]
            backend=backend,
            warmup=False,
            golden_gate=False,
            drift_tolerance={k: float(v) for k, v in tolerances.items()},
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    try:
        passed = asyncio.run(_pin(settings, out, check))
    except SqueezerError as e:
        typer.echo(f"squeezer pin: {e.message}", err=True)
        raise typer.Exit(2) from None
    if not passed:
        raise typer.Exit(1)


async def _pin(settings: Any, out: Path | None, check: Path | None) -> bool:
    from rich.console import Console
    from rich.table import Table

    from squeezer.optimize import golden
    from squeezer.server.lifecycle.golden_run import record
    from squeezer.server.runtime import Runtime

    console = Console()
    runtime = Runtime(settings)
    await runtime.start()
    try:
        served = runtime.registry.get(settings.models[0].name)
        info = served.info
        fingerprint = {"digest": info.content_hash, "parts": info.fingerprint}
        if out is not None:
            with console.status(f"recording {info.key}'s outputs"):
                outputs = await record(runtime.engine, served)
            lock = golden.Lockfile(
                info.name, info.version, fingerprint, info.versions.as_dict(), outputs
            )
            lock.write(out)
            console.print(
                f"pinned {info.key} ({', '.join(outputs)}; fingerprint {info.content_hash[:16]}) "
                f"to {out}"
            )
            return True
        assert check is not None
        lock = golden.Lockfile.read(check)
        with console.status(f"checking {info.key} against {check}"):
            outputs = await record(runtime.engine, served, lock.outputs)
        report = golden.judge(
            lock,
            str(check),
            outputs,
            fingerprint,
            info.versions.as_dict(),
            golden.tolerances(settings.drift_tolerance),
        )
    finally:
        await runtime.stop()
    table = Table("task", "loss", "tolerance", "figures", "verdict")
    for t in report.tasks:
        figures = ", ".join(f"{k} {v:.6g}" for k, v in t.figures.items())
        verdict = "[green]pass[/]" if t.passed else "[red]DRIFT[/]"
        table.add_row(t.task, f"{t.loss:.6g}", f"{t.tolerance:g}", figures, verdict)
    console.print(table)
    console.print(
        "fingerprint: "
        + (
            ", ".join(report.fingerprint_changes) + " changed"
            if report.fingerprint_changes
            else "same"
        )
    )
    for name, (then, now) in report.library_changes.items():
        console.print(f"library {name}: pinned with {then}, now {now}")
    console.print("[green]passed[/]" if report.passed else "[red]drift beyond tolerance[/]")
    return report.passed

"""``squeezer env``: the versions, CPU flags and GPU a bug report should carry."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from squeezer.cli.app import app


@app.command()
def env(
    json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print library versions (against the tested ranges), CPU flags and GPUs."""
    from rich.console import Console
    from rich.table import Table

    from squeezer.backends.environment import environment

    report = environment()
    if json:
        typer.echo(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
        return
    console = Console()
    console.print(f"squeezer {report.squeezer} on {report.platform}")
    console.print(f"versions: {report.versions.line()}")
    table = Table("library", "installed", "tested range", "")
    for lib in report.libraries:
        status = "[yellow]outside the tested range[/yellow]" if lib.outside else ""
        table.add_row(lib.name, lib.version or "-", lib.tested, status)
    console.print(table)
    hw = report.hardware
    console.print(f"cpu: {hw.cpu} ({hw.machine}, {hw.cores} compute threads)")
    console.print(f"cpu flags: {' '.join(hw.flags) or '-'}")
    build = f"CUDA {report.torch_cuda}" if report.torch_cuda else "CPU build"
    console.print(f"torch: {build}; gpus: {', '.join(report.gpus) or 'none'}")

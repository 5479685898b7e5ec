"""The Typer app every verb registers on, and the option helpers they share."""

from __future__ import annotations

from typing import Any

import typer

app = typer.Typer(
    help="Serve Hugging Face transformer models at production speed.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # help texts hold literal [brackets] (TOML tables, defaults)
)


def option(help: str, env: str, **kw: Any) -> Any:
    return typer.Option(help=help, envvar=f"SQUEEZER_{env}", show_envvar=True, **kw)


def parse_task(value: str) -> Any:
    from squeezer.types import Task

    try:
        return Task(value)
    except ValueError:
        raise typer.BadParameter(
            f"--task {value!r}: expected one of {', '.join(t.value for t in Task)}"
        ) from None


def parse_device(value: str) -> str:
    """A resolved device; one that is not there is a usage error, not a traceback."""
    from squeezer.backends.device import resolve_device

    try:
        return resolve_device(value)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--device") from e


def parse_objective(value: str) -> Any:
    from squeezer.optimize.select import Objective

    try:
        return Objective(value)
    except ValueError:
        raise typer.BadParameter(
            f"--objective {value!r}: expected {' or '.join(o.value for o in Objective)}"
        ) from None


def task_pair(arg: str, flag: str = "--default-model") -> tuple[str, str]:
    """``TASK=VALUE`` from a repeatable flag."""
    task, sep, value = arg.partition("=")
    if not sep or not task or not value:
        raise typer.BadParameter(f"{flag} {arg!r}: expected TASK=VALUE (e.g. embed=...)")
    return task, value

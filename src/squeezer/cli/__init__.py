"""The ``squeezer`` command: each verb a thin function over the library, one module
per verb family (``serve``, ``ray-config``, ``batch``, ``models``, ``pin``, ``measure``,
``optimize``, ``env``)."""

from __future__ import annotations

import typer

from squeezer import __version__
from squeezer.cli import batch, env, measure, models, optimize, pin, ray_config, serve
from squeezer.cli.app import app

__all__ = [
    "app",
    "batch",
    "env",
    "main",
    "measure",
    "models",
    "optimize",
    "pin",
    "ray_config",
    "serve",
]


@app.command()
def version() -> None:
    """Print squeezer's version."""
    typer.echo(__version__)


def main() -> None:
    app()

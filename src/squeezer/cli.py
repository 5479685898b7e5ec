"""The ``squeezer`` command: each verb a thin function over the library."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from squeezer import __version__

app = typer.Typer(
    help="Serve Hugging Face transformer models at production speed.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # help texts hold literal [brackets] (TOML tables, defaults)
)


def _opt(help: str, env: str, **kw: Any) -> Any:
    return typer.Option(help=help, envvar=f"SQUEEZER_{env}", show_envvar=True, **kw)


@app.command()
def serve(
    model: Annotated[
        list[str] | None,
        _opt(
            "Model to serve as NAME=PATH (repeatable). PATH: a local HF folder, a hub id "
            "already in the local HF cache, or package:MODULE. Default: the packaged "
            "all-MiniLM-L6-v2.",
            "MODEL",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        _opt("TOML file: [server] settings and [models.NAME] tables.", "CONFIG", exists=True),
    ] = None,
    default_model: Annotated[
        list[str] | None,
        _opt(
            "TASK=NAME: the model that model-less routes of TASK use (repeatable).", "DEFAULT_MODEL"
        ),
    ] = None,
    host: Annotated[str | None, _opt("Address to bind. [default: 127.0.0.1]", "HOST")] = None,
    port: Annotated[int | None, _opt("Port to bind. [default: 8080]", "PORT")] = None,
    backend: Annotated[str | None, _opt("Runtime for models. [default: torch]", "BACKEND")] = None,
    device: Annotated[
        str | None, _opt("auto, cpu, cuda or cuda:N. [default: auto]", "DEVICE")
    ] = None,
    dtype: Annotated[
        str | None, _opt("auto, float32, float16 or bfloat16. [default: auto]", "DTYPE")
    ] = None,
    threads: Annotated[
        int | None, _opt("Compute threads; 0 = one per core. [default: 0]", "THREADS")
    ] = None,
    tokenizer_workers: Annotated[
        int | None, _opt("Threads tokenizing beside compute. [default: 1]", "TOKENIZER_WORKERS")
    ] = None,
    max_batch_tokens: Annotated[
        int | None,
        _opt("Padded tokens per forward pass. [default: 8192]", "MAX_BATCH_TOKENS"),
    ] = None,
    max_batch_requests: Annotated[
        int | None, _opt("Inputs per forward pass. [default: 64]", "MAX_BATCH_REQUESTS")
    ] = None,
    batch_overhead_tokens: Annotated[
        float | None,
        _opt(
            "Fixed cost of a forward pass in padded tokens; batches split into length "
            "groups by it. [default: 32 on CPU, no split on CUDA]",
            "BATCH_OVERHEAD_TOKENS",
        ),
    ] = None,
    max_wait_ms: Annotated[
        float | None,
        _opt("Wait up to this long for a fuller batch (opt-in). [default: 0]", "MAX_WAIT_MS"),
    ] = None,
    max_concurrent_requests: Annotated[
        int | None,
        _opt("Requests admitted at once; beyond: 429. [default: 512]", "MAX_CONCURRENT_REQUESTS"),
    ] = None,
    max_client_batch_size: Annotated[
        int | None,
        _opt("Inputs per request. [default: 256]", "MAX_CLIENT_BATCH_SIZE"),
    ] = None,
    max_body_bytes: Annotated[
        int | None, _opt("Largest request body; beyond: 413. [default: 2000000]", "MAX_BODY_BYTES")
    ] = None,
    request_timeout: Annotated[
        float | None,
        _opt("Seconds a request may wait; 0 = no deadline. [default: 30]", "REQUEST_TIMEOUT"),
    ] = None,
    shutdown_timeout: Annotated[
        float | None,
        _opt(
            "Seconds to finish accepted requests after SIGTERM. [default: 30]", "SHUTDOWN_TIMEOUT"
        ),
    ] = None,
    drain_delay: Annotated[
        float | None,
        _opt(
            "Seconds to keep serving with /ready at 503 after SIGTERM, before the drain "
            "completes (lets load balancers notice). [default: 0]",
            "DRAIN_DELAY",
        ),
    ] = None,
    warmup: Annotated[
        bool | None, _opt("Run warm-up batches before /ready. [default: warmup]", "WARMUP")
    ] = None,
    log_level: Annotated[str | None, _opt("Log level. [default: info]", "LOG_LEVEL")] = None,
) -> None:
    """Serve models over HTTP (TEI, OpenAI and HF Inference API dialects)."""
    from squeezer.backends.device import configure_threads
    from squeezer.config import load_settings
    from squeezer.errors import SqueezerError
    from squeezer.server.serve import run_server

    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "backend": backend,
        "device": device,
        "dtype": dtype,
        "threads": threads,
        "tokenizer_workers": tokenizer_workers,
        "max_batch_tokens": max_batch_tokens,
        "max_batch_requests": max_batch_requests,
        "max_wait_ms": max_wait_ms,
        "batch_overhead_tokens": batch_overhead_tokens,
        "max_concurrent_requests": max_concurrent_requests,
        "max_client_batch_size": max_client_batch_size,
        "max_body_bytes": max_body_bytes,
        "request_timeout": request_timeout,
        "shutdown_timeout": shutdown_timeout,
        "drain_delay": drain_delay,
        "warmup": warmup,
        "log_level": log_level,
    }
    if default_model:
        overrides["default_models"] = dict(_task_pair(arg) for arg in default_model)
    try:
        settings = load_settings(config, overrides, model)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    configure_threads(settings.threads)
    try:
        run_server(settings)
    except SqueezerError as e:
        typer.echo(f"squeezer: {e.message}", err=True)
        raise typer.Exit(2) from None


def _task_pair(arg: str) -> tuple[str, str]:
    task, sep, name = arg.partition("=")
    if not sep or not task or not name:
        raise typer.BadParameter(f"--default-model {arg!r}: expected TASK=NAME (e.g. embed=minilm)")
    return task, name


@app.command()
def version() -> None:
    """Print squeezer's version."""
    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

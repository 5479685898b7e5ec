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
            "already in the local HF cache, a GGUF file, or package:MODULE. Default: the "
            "packaged all-MiniLM-L6-v2, and SmolLM2-135M-Instruct when installed.",
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
    precision_check: Annotated[
        bool | None,
        _opt(
            "Measure fp16/bf16 models against fp32 at load (min cosine on held-out text, "
            "in the log and /info). [default: precision-check]",
            "PRECISION_CHECK",
        ),
    ] = None,
    gpu_memory_fraction: Annotated[
        float | None,
        _opt(
            "Share of each GPU's memory squeezer may take (batches that would not fit "
            "are split). [default: 0.9]",
            "GPU_MEMORY_FRACTION",
        ),
    ] = None,
    api_workers: Annotated[
        int | None,
        _opt(
            "API-server processes in front of the engine process, sharing the port "
            "(HTTP, tokenization and JSON off the engine's GIL). [default: 0 = one "
            "process]",
            "API_WORKERS",
        ),
    ] = None,
    threads: Annotated[
        int | None, _opt("Compute threads; 0 = one per core. [default: 0]", "THREADS")
    ] = None,
    tokenizer_workers: Annotated[
        int | None,
        _opt(
            "Threads tokenizing beside compute. [default: 1 on CPU, cores - 2 with a GPU]",
            "TOKENIZER_WORKERS",
        ),
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
    optimize: Annotated[
        bool | None,
        _opt(
            "Run `squeezer optimize` on each model at start-up (cached by model hash and "
            "hardware) and serve the winner. [default: no-optimize]",
            "OPTIMIZE",
        ),
    ] = None,
    optimize_max_loss: Annotated[
        float | None,
        _opt("Accuracy budget for --optimize. [default: 0.01]", "OPTIMIZE_MAX_LOSS"),
    ] = None,
    optimize_cache: Annotated[
        Path | None,
        _opt(
            "Folder of --optimize artifacts. [default: ~/.cache/squeezer/optimized]",
            "OPTIMIZE_CACHE",
        ),
    ] = None,
    max_total_tokens: Annotated[
        int | None,
        _opt(
            "Generation: prompt + new tokens per request (and per KV slot). [default: 2048]",
            "MAX_TOTAL_TOKENS",
        ),
    ] = None,
    max_input_tokens: Annotated[
        int | None,
        _opt(
            "Generation: prompt tokens per request. [default: max-total-tokens - 1]",
            "MAX_INPUT_TOKENS",
        ),
    ] = None,
    max_batch_total_tokens: Annotated[
        int | None,
        _opt(
            "Generation: prompt + max_new_tokens summed over the sequences decoding "
            "together. [default: max-num-seqs x max-total-tokens]",
            "MAX_BATCH_TOTAL_TOKENS",
        ),
    ] = None,
    max_num_seqs: Annotated[
        int | None,
        _opt("Generation: sequences decoding together per model. [default: 32]", "MAX_NUM_SEQS"),
    ] = None,
    max_batch_prefill_tokens: Annotated[
        int | None,
        _opt(
            "Generation: prompt tokens prefilled per step beside decoding (chunked "
            "prefill). [default: 256 on CPU, 4096 on GPU]",
            "MAX_BATCH_PREFILL_TOKENS",
        ),
    ] = None,
    kv_cache: Annotated[
        str | None,
        _opt(
            "Generation (torch): slots (a full-length buffer per sequence), paged (a "
            "pool of blocks, FlexAttention) or auto. [default: auto = paged on CUDA]",
            "KV_CACHE",
        ),
    ] = None,
    kv_block_size: Annotated[
        int | None, _opt("Generation: positions per paged KV block. [default: 16]", "KV_BLOCK_SIZE")
    ] = None,
    max_stop_sequences: Annotated[
        int | None,
        _opt("Generation: stop sequences per request. [default: 4]", "MAX_STOP_SEQUENCES"),
    ] = None,
    quantize: Annotated[
        str | None,
        _opt(
            "Generation, lossy and faster: fp16 or int8 (weight-only linear layers in "
            "torch), or gguf (llama.cpp on the GGUF file the model came from; needs "
            "squeezer[llamacpp]). Unset keeps the lossless fp32 path.",
            "QUANTIZE",
        ),
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
        "precision_check": precision_check,
        "gpu_memory_fraction": gpu_memory_fraction,
        "api_workers": api_workers,
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
        "optimize": optimize,
        "optimize_max_loss": optimize_max_loss,
        "optimize_cache": optimize_cache,
        "max_total_tokens": max_total_tokens,
        "max_input_tokens": max_input_tokens,
        "max_batch_total_tokens": max_batch_total_tokens,
        "max_num_seqs": max_num_seqs,
        "max_batch_prefill_tokens": max_batch_prefill_tokens,
        "kv_cache": kv_cache,
        "kv_block_size": kv_block_size,
        "max_stop_sequences": max_stop_sequences,
        "quantize": quantize,
        "log_level": log_level,
    }
    if default_model:
        overrides["default_models"] = dict(_task_pair(arg) for arg in default_model)
    try:
        settings = load_settings(config, overrides, model)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    for device in {settings.device, *(m.device for m in settings.models if m.device)}:
        _device(device)  # a device that is not there: a usage error, before any load
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    configure_threads(settings.threads)
    try:
        run_server(settings)
    except SqueezerError as e:
        typer.echo(f"squeezer: {e.message}", err=True)
        raise typer.Exit(2) from None


def _task(value: str) -> Any:
    from squeezer.types import Task

    try:
        return Task(value)
    except ValueError:
        raise typer.BadParameter(
            f"--task {value!r}: expected one of {', '.join(t.value for t in Task)}"
        ) from None


def _device(value: str) -> str:
    """A resolved device; one that is not there is a usage error, not a traceback."""
    from squeezer.backends.device import resolve_device

    try:
        return resolve_device(value)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--device") from e


def _objective(value: str) -> Any:
    from squeezer.optimize.select import Objective

    try:
        return Objective(value)
    except ValueError:
        raise typer.BadParameter(
            f"--objective {value!r}: expected {' or '.join(o.value for o in Objective)}"
        ) from None


def _task_pair(arg: str) -> tuple[str, str]:
    task, sep, name = arg.partition("=")
    if not sep or not task or not name:
        raise typer.BadParameter(f"--default-model {arg!r}: expected TASK=NAME (e.g. embed=minilm)")
    return task, name


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
        task=_task(task) if task else None,
        max_loss=max_loss,
        objective=_objective(objective),
        texts=texts,
        per_split=per_split,
        only=tuple(only or ()),
        speed_budget_s=speed_budget,
        keep_candidates=keep_candidates,
        device=_device(device),
    )
    try:
        with SearchProgress(console) as progress:
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


@app.command()
def version() -> None:
    """Print squeezer's version."""
    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

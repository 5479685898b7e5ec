"""``squeezer serve``: every serving setting as a flag, env var or TOML key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from squeezer.cli import ray_flags as rf
from squeezer.cli.app import app, option, parse_device


@app.command()
def serve(
    model: Annotated[
        list[str] | None,
        option(
            "Model to serve as NAME=PATH or NAME:VERSION=PATH (repeatable). PATH: a local "
            "HF folder, a hub id already in the local HF cache (org/name@REVISION pins "
            "one: version REVISION), a GGUF file, package:MODULE, or an MLflow registry "
            "version (models:/NAME/3, models:/NAME@ALIAS). Default, without "
            "--model-repository: the packaged all-MiniLM-L6-v2, and SmolLM2-135M-Instruct "
            "when installed.",
            "MODEL",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        option("TOML file: [server] settings and [models.NAME] tables.", "CONFIG", exists=True),
    ] = None,
    default_model: Annotated[
        list[str] | None,
        option(
            "TASK=NAME: the model that model-less routes of TASK use (repeatable).", "DEFAULT_MODEL"
        ),
    ] = None,
    model_repository: Annotated[
        Path | None,
        option(
            "Model repository laid out as Triton's: DIR/NAME/VERSION/ (an HF folder, a GGUF "
            "file or an optimizer artifact each), DIR/NAME/squeezer.toml for settings "
            "and aliases. Each model's default version loads at start-up.",
            "MODEL_REPOSITORY",
            file_okay=False,
        ),
    ] = None,
    repository_load_all: Annotated[
        bool | None,
        option(
            "Load each repository model's default version at start-up; "
            "--no-repository-load-all loads only what the admin API asks for (Triton's "
            "explicit model control). [default: repository-load-all]",
            "REPOSITORY_LOAD_ALL",
        ),
    ] = None,
    alias: Annotated[
        list[str] | None,
        option("NAME@ALIAS=VERSION: an alias of a --model version (repeatable).", "ALIAS"),
    ] = None,
    mlflow_tracking_uri: Annotated[
        str | None,
        option(
            "MLflow tracking server of models:/ sources. [default: $MLFLOW_TRACKING_URI]",
            "MLFLOW_TRACKING_URI",
        ),
    ] = None,
    max_loaded_models: Annotated[
        int | None,
        option(
            "Model versions loaded at once; a load past it evicts the least recently used "
            "idle version that is neither pinned nor named by an alias, and a request for "
            "an evicted version loads it again (503 with Retry-After meanwhile).",
            "MAX_LOADED_MODELS",
        ),
    ] = None,
    max_loaded_memory_mib: Annotated[
        float | None,
        option(
            "The same, for the loaded versions' weight files together (MiB).",
            "MAX_LOADED_MEMORY_MIB",
        ),
    ] = None,
    drift_tolerance: Annotated[
        list[str] | None,
        option(
            "TASK=LOSS: the largest golden-output loss a load passes with (repeatable; "
            "default: as pinned, e.g. embed=0.0001). See squeezer pin.",
            "DRIFT_TOLERANCE",
        ),
    ] = None,
    allow_drift: Annotated[
        bool | None,
        option(
            "Serve a version whose outputs drifted past its lockfile's tolerance (the "
            "drift is still reported). [default: no-allow-drift]",
            "ALLOW_DRIFT",
        ),
    ] = None,
    allow_slow_artifact: Annotated[
        bool | None,
        option(
            "Serve an optimized artifact whose kernels need CPU instructions this machine "
            "lacks (e.g. bf16 without AVX512_BF16 or AMX): it runs, emulated and slower "
            "than fp32. [default: no-allow-slow-artifact]",
            "ALLOW_SLOW_ARTIFACT",
        ),
    ] = None,
    unload_timeout: Annotated[
        float | None,
        option(
            "Seconds an unloading or replaced version waits for the requests it accepted "
            "(streams included) before what is left fails. [default: 300]",
            "UNLOAD_TIMEOUT",
        ),
    ] = None,
    host: Annotated[str | None, option("Address to bind. [default: 127.0.0.1]", "HOST")] = None,
    port: Annotated[int | None, option("Port to bind. [default: 8080]", "PORT")] = None,
    backend: Annotated[
        str | None, option("Runtime for models. [default: torch]", "BACKEND")
    ] = None,
    device: Annotated[
        str | None, option("auto, cpu, cuda or cuda:N. [default: auto]", "DEVICE")
    ] = None,
    dtype: Annotated[
        str | None, option("auto, float32, float16 or bfloat16. [default: auto]", "DTYPE")
    ] = None,
    precision_check: Annotated[
        bool | None,
        option(
            "Measure fp16/bf16 models against fp32 at load (min cosine on held-out text, "
            "in the log and /info). [default: precision-check]",
            "PRECISION_CHECK",
        ),
    ] = None,
    gpu_memory_fraction: Annotated[
        float | None,
        option(
            "Share of each GPU's memory squeezer may take (batches that would not fit "
            "are split). [default: 0.9]",
            "GPU_MEMORY_FRACTION",
        ),
    ] = None,
    api_workers: Annotated[
        int | None,
        option(
            "API-server processes in front of the engine process, sharing the port "
            "(HTTP, tokenization and JSON off the engine's GIL). [default: 0 = one "
            "process]",
            "API_WORKERS",
        ),
    ] = None,
    threads: Annotated[
        int | None, option("Compute threads; 0 = one per core. [default: 0]", "THREADS")
    ] = None,
    tokenizer_workers: Annotated[
        int | None,
        option(
            "Threads tokenizing beside compute. [default: 1 on CPU, cores - 2 with a GPU]",
            "TOKENIZER_WORKERS",
        ),
    ] = None,
    max_batch_tokens: Annotated[
        int | None,
        option("Padded tokens per forward pass. [default: 8192]", "MAX_BATCH_TOKENS"),
    ] = None,
    max_batch_requests: Annotated[
        int | None, option("Inputs per forward pass. [default: 64]", "MAX_BATCH_REQUESTS")
    ] = None,
    batch_overhead_tokens: Annotated[
        float | None,
        option(
            "Fixed cost of a forward pass in padded tokens; batches split into length "
            "groups by it. [default: 32 on CPU, no split on CUDA]",
            "BATCH_OVERHEAD_TOKENS",
        ),
    ] = None,
    max_wait_ms: Annotated[
        float | None,
        option("Wait up to this long for a fuller batch (opt-in). [default: 0]", "MAX_WAIT_MS"),
    ] = None,
    max_concurrent_requests: Annotated[
        int | None,
        option("Requests admitted at once; beyond: 429. [default: 512]", "MAX_CONCURRENT_REQUESTS"),
    ] = None,
    max_client_batch_size: Annotated[
        int | None,
        option("Inputs per request. [default: 256]", "MAX_CLIENT_BATCH_SIZE"),
    ] = None,
    max_input_windows: Annotated[
        int | None,
        option(
            "Windows one request's long inputs may be split into (QA contexts, token "
            "classification); beyond: 422. [default: 512]",
            "MAX_INPUT_WINDOWS",
        ),
    ] = None,
    max_body_bytes: Annotated[
        int | None,
        option("Largest request body; beyond: 413. [default: 2000000]", "MAX_BODY_BYTES"),
    ] = None,
    request_timeout: Annotated[
        float | None,
        option("Seconds a request may wait; 0 = no deadline. [default: 30]", "REQUEST_TIMEOUT"),
    ] = None,
    shutdown_timeout: Annotated[
        float | None,
        option(
            "Seconds to finish accepted requests after SIGTERM. [default: 30]", "SHUTDOWN_TIMEOUT"
        ),
    ] = None,
    drain_delay: Annotated[
        float | None,
        option(
            "Seconds to keep serving with /ready at 503 after SIGTERM, before the drain "
            "completes (lets load balancers notice). [default: 0]",
            "DRAIN_DELAY",
        ),
    ] = None,
    warmup: Annotated[
        bool | None, option("Run warm-up batches before /ready. [default: warmup]", "WARMUP")
    ] = None,
    optimize: Annotated[
        bool | None,
        option(
            "Run `squeezer optimize` on each model at start-up (cached by model hash and "
            "hardware) and serve the winner. [default: no-optimize]",
            "OPTIMIZE",
        ),
    ] = None,
    optimize_max_loss: Annotated[
        float | None,
        option("Accuracy budget for --optimize. [default: 0.01]", "OPTIMIZE_MAX_LOSS"),
    ] = None,
    optimize_cache: Annotated[
        Path | None,
        option(
            "Folder of --optimize artifacts. [default: ~/.cache/squeezer/optimized]",
            "OPTIMIZE_CACHE",
        ),
    ] = None,
    max_total_tokens: Annotated[
        int | None,
        option(
            "Generation: prompt + new tokens per request (and per KV slot). [default: 2048]",
            "MAX_TOTAL_TOKENS",
        ),
    ] = None,
    max_input_tokens: Annotated[
        int | None,
        option(
            "Generation: prompt tokens per request. [default: max-total-tokens - 1]",
            "MAX_INPUT_TOKENS",
        ),
    ] = None,
    max_batch_total_tokens: Annotated[
        int | None,
        option(
            "Generation: prompt + max_new_tokens summed over the sequences decoding "
            "together. [default: max-num-seqs x max-total-tokens]",
            "MAX_BATCH_TOTAL_TOKENS",
        ),
    ] = None,
    max_num_seqs: Annotated[
        int | None,
        option("Generation: sequences decoding together per model. [default: 32]", "MAX_NUM_SEQS"),
    ] = None,
    max_batch_prefill_tokens: Annotated[
        int | None,
        option(
            "Generation: prompt tokens prefilled per step beside decoding (chunked "
            "prefill). [default: 256 on CPU, 4096 on GPU]",
            "MAX_BATCH_PREFILL_TOKENS",
        ),
    ] = None,
    kv_cache: Annotated[
        str | None,
        option(
            "Generation (torch): slots (a full-length buffer per sequence), paged (a "
            "pool of blocks, FlexAttention) or auto. [default: auto = paged on CUDA]",
            "KV_CACHE",
        ),
    ] = None,
    kv_block_size: Annotated[
        int | None,
        option("Generation: positions per paged KV block. [default: 16]", "KV_BLOCK_SIZE"),
    ] = None,
    max_stop_sequences: Annotated[
        int | None,
        option("Generation: stop sequences per request. [default: 4]", "MAX_STOP_SEQUENCES"),
    ] = None,
    quantize: Annotated[
        str | None,
        option(
            "Generation, lossy and faster: fp16 or int8 (weight-only linear layers in "
            "torch), or gguf (llama.cpp on the GGUF file the model came from; needs "
            "squeezer[llamacpp]). Unset keeps the lossless fp32 path.",
            "QUANTIZE",
        ),
    ] = None,
    speculative_config: Annotated[
        str | None,
        option(
            "Generation, lossless: speculative decoding as vLLM's JSON, e.g. "
            '\'{"method": "ngram", "num_speculative_tokens": 4}\' (prompt lookup) or '
            '\'{"model": "DRAFT_FOLDER", "num_speculative_tokens": 4}\' (a small LM with '
            "the same tokenizer). Tokens are the same as without it. Unset: off.",
            "SPECULATIVE_CONFIG",
        ),
    ] = None,
    log_level: Annotated[str | None, option("Log level. [default: info]", "LOG_LEVEL")] = None,
    log_format: Annotated[
        str | None,
        option("text, or json: one JSON object per line. [default: text]", "LOG_FORMAT"),
    ] = None,
    access_log: Annotated[
        bool | None,
        option("One log line per request at info. [default: access-log]", "ACCESS_LOG"),
    ] = None,
    api_key: Annotated[
        list[str] | None,
        option(
            "Key inference routes require as Authorization: Bearer KEY (repeatable; the "
            "variable takes several, space-separated). Unset: open.",
            "API_KEY",
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        option("File of API keys, one per line (# comments).", "API_KEY_FILE", exists=True),
    ] = None,
    admin_api_key: Annotated[
        str | None,
        option(
            "Key of /metrics, of /info's model paths and of routes that change what is "
            "served. Unset: those follow --api-key, and the changing ones work on a "
            "loopback bind only.",
            "ADMIN_API_KEY",
        ),
    ] = None,
    admin_api_key_file: Annotated[
        Path | None,
        option("File holding the admin API key.", "ADMIN_API_KEY_FILE", exists=True),
    ] = None,
    cors_allow_origin: Annotated[
        list[str] | None,
        option("Origin browsers may call from (repeatable; * for any).", "CORS_ALLOW_ORIGIN"),
    ] = None,
    ssl_certfile: Annotated[
        Path | None, option("TLS certificate (PEM); with --ssl-keyfile.", "SSL_CERTFILE")
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, option("TLS private key (PEM); with --ssl-certfile.", "SSL_KEYFILE")
    ] = None,
    ray: Annotated[
        bool,
        option(
            "Serve on Ray Serve: an ingress deployment (this HTTP app) in front of engine "
            "deployments (the models), on --ray-address or a local Ray "
            "(docs/scale-out.md; pip install 'squeezer[ray]').",
            "RAY",
        ),
    ] = False,
    ray_address: rf.RayAddress = None,
    ray_haproxy: rf.RayHaproxy = False,
    replicas: rf.Replicas = None,
    min_replicas: rf.MinReplicas = None,
    max_replicas: rf.MaxReplicas = None,
    target_ongoing_requests: rf.TargetOngoing = None,
    max_ongoing_requests: rf.MaxOngoing = None,
    max_queued_requests: rf.MaxQueued = None,
    replica_cpus: rf.ReplicaCpus = None,
    replica_gpus: rf.ReplicaGpus = None,
    max_replicas_per_node: rf.MaxPerNode = None,
    ingress_replicas: rf.IngressReplicas = None,
    engine_per_model: rf.EnginePerModel = None,
    replica_metrics_port: rf.ReplicaMetricsPort = None,
) -> None:
    """Serve models over HTTP (TEI, OpenAI and HF Inference API dialects)."""
    from squeezer.backends.device import configure_threads
    from squeezer.cli.serve_settings import settings_from_flags
    from squeezer.errors import SqueezerError

    flags = dict(locals())
    if not ray:
        from squeezer.cli.ray_flags import refuse_without_ray

        refuse_without_ray(flags)
    settings = settings_from_flags(flags)
    for device in {settings.device, *(m.device for m in settings.models if m.device)}:
        parse_device(device)  # a device that is not there: a usage error, before any load
    configure_threads(settings.threads)
    try:
        if ray:
            from squeezer.cli.ray_flags import scaling_from
            from squeezer.cluster.run import serve_on_ray

            scaling = scaling_from(flags)
            serve_on_ray(settings, scaling, address=ray_address, haproxy=ray_haproxy)
        else:
            from squeezer.server.serve import run_server

            run_server(settings)
    except SqueezerError as e:
        typer.echo(f"squeezer: {e.message}", err=True)
        raise typer.Exit(2) from None

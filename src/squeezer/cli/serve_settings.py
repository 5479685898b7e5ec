"""``serve``'s flags as ``Settings``: the flags that are settings pass through by name
(unset ones leave the TOML's or the default), the rest (keys, key files, aliases,
TASK=NAME pairs) are read and checked here, each failure a usage error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from squeezer.cli.app import task_pair
from squeezer.config import Settings

#: Flags that are ``Settings`` fields of the same name.
_SAME_NAME = (
    "host", "port", "backend", "device", "dtype", "precision_check", "gpu_memory_fraction",
    "api_workers", "threads", "tokenizer_workers", "max_batch_tokens", "max_batch_requests",
    "max_wait_ms", "batch_overhead_tokens", "max_concurrent_requests",
    "max_client_batch_size", "max_input_windows", "max_body_bytes", "request_timeout",
    "shutdown_timeout", "drain_delay", "warmup", "optimize", "optimize_max_loss",
    "optimize_cache", "max_total_tokens", "max_input_tokens", "max_batch_total_tokens",
    "max_num_seqs", "max_batch_prefill_tokens", "kv_cache", "kv_block_size",
    "max_stop_sequences", "quantize", "speculative_config", "log_level", "log_format", "access_log",
    "ssl_certfile", "ssl_keyfile", "model_repository", "repository_load_all",
    "mlflow_tracking_uri", "unload_timeout", "max_loaded_models", "max_loaded_memory_mib",
    "allow_drift", "allow_slow_artifact",
)  # fmt: skip


def settings_from_flags(flags: dict[str, Any]) -> Settings:
    """``flags``: the command's parameters by name (absent ones count as unset)."""
    from squeezer.config import load_settings, parse_alias_arg, read_keys

    overrides: dict[str, Any] = {name: flags.get(name) for name in _SAME_NAME}
    overrides["cors_allow_origins"] = flags.get("cors_allow_origin") or None
    key_file: Path | None = flags.get("api_key_file")
    keys = [*(flags.get("api_key") or []), *(read_keys(key_file) if key_file else [])]
    if keys:
        overrides["api_keys"] = keys
    admin_api_key = flags.get("admin_api_key")
    admin_file: Path | None = flags.get("admin_api_key_file")
    if admin_file is not None:
        admin = read_keys(admin_file)
        if len(admin) != 1:
            raise typer.BadParameter(
                f"{admin_file} holds {len(admin)} keys; the admin key is one",
                param_hint="--admin-api-key-file",
            )
        admin_api_key = admin[0]
    overrides["admin_api_key"] = admin_api_key
    if flags.get("default_model"):
        overrides["default_models"] = dict(task_pair(arg) for arg in flags["default_model"])
    if flags.get("drift_tolerance"):
        pairs = (task_pair(arg, "--drift-tolerance") for arg in flags["drift_tolerance"])
        overrides["drift_tolerance"] = {task: float(loss) for task, loss in pairs}
    if flags.get("speculative_config"):
        from squeezer.backends.speculation import SpeculationConfig

        try:
            SpeculationConfig.parse(flags["speculative_config"])
        except (TypeError, ValueError) as e:
            raise typer.BadParameter(str(e), param_hint="--speculative-config") from e
    try:
        aliases: dict[str, dict[str, str]] = {}
        for arg in flags.get("alias") or []:
            name, label, version = parse_alias_arg(arg)
            aliases.setdefault(name, {})[label] = version
        if aliases:
            overrides["aliases"] = aliases
        return load_settings(flags.get("config"), overrides, flags.get("model"))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e


__all__ = ["settings_from_flags"]

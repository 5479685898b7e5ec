"""``squeezer profile`` on a tiny model: points, files, and a recommendation the server takes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from squeezer.bench.profile import (
    ProfilePoint,
    ProfileSettings,
    recommend,
    run_profile,
    write_outputs,
)
from squeezer.cli import app
from squeezer.config import Settings

PNG = b"\x89PNG\r\n\x1a\n"


def point(batch: int, seq: int, ms: float, mb: float, padded: bool = False) -> ProfilePoint:
    return ProfilePoint("torch", padded, batch, seq, batch * seq, batch * seq, ms, ms, mb, mb)


def test_profile_measures_writes_and_recommends(tiny_bert: Path, tmp_path: Path) -> None:
    s = ProfileSettings(
        path=str(tiny_bert), seq_lengths=(8, 16, 32, 128), batch_sizes=(1, 4), repeats=2
    )
    result = run_profile(s, progress=False)
    assert {(p.seq_len, p.batch, p.padded) for p in result.points} == {
        (n, b, padded) for n in (8, 16, 32) for b in (1, 4) for padded in (False, True)
    }  # 128 is over the model's 64 tokens: skipped
    assert all(p.latency_p50_ms > 0 and p.peak_total_mb > 0 for p in result.points)
    padded = [p for p in result.points if p.padded and p.batch == 4]
    assert all(p.real_tokens < p.padded_tokens for p in padded)
    rec = result.recommendations[0]
    assert Settings(max_batch_tokens=rec.max_batch_tokens).max_batch_tokens == rec.max_batch_tokens
    paths = write_outputs(result, tmp_path / "tiny")
    assert [p.name for p in paths] == [
        "tiny.csv",
        "tiny.json",
        "tiny-memory.png",
        "tiny-latency.png",
    ]
    data = json.loads(paths[1].read_text())
    assert set(data) == {
        "settings", "machine", "points", "recommendations", "largest_batches", "schema_version"
    }  # fmt: skip
    assert paths[0].read_text().splitlines()[0].startswith("backend,padded,batch,seq_len")
    assert all(p.read_bytes()[:8] == PNG for p in paths[2:])


def test_recommendation_is_the_largest_shape_under_target_and_budget() -> None:
    points = [
        point(1, 64, 5, 10),
        point(8, 64, 30, 50),
        point(16, 64, 45, 400),  # fast enough, too much memory
        point(32, 64, 90, 100),  # too slow
        point(32, 64, 1, 1, padded=True),  # padded points do not count
        point(64, 64, 40, 10),  # fits, but a smaller shape does not: not a safe bound
    ]
    assert recommend(points, "torch", 50, None).max_batch_tokens == 16 * 64
    rec = recommend(points, "torch", 50, 100)
    assert rec.max_batch_tokens == 8 * 64 and "30.0 ms" in rec.why
    fallback = recommend(points, "torch", 1, None)
    assert fallback.max_batch_tokens == 64 and "no shape met" in fallback.why


def test_the_server_takes_the_recommended_flag() -> None:
    help_text = CliRunner().invoke(app, ["serve", "--help"]).output
    assert "--max-batch-tokens" in help_text


def test_cli_profile(tiny_bert: Path, tmp_path: Path) -> None:
    args = ["profile", str(tiny_bert), "--seq-lengths", "8,16", "--batch-sizes", "1,2"]
    r = CliRunner().invoke(app, [*args, "--repeats", "1", "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert "squeezer serve --max-batch-tokens" in r.output and (tmp_path / "p.csv").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_largest_batch_is_found_by_measurement(tiny_bert: Path) -> None:
    s = ProfileSettings(path=str(tiny_bert), seq_lengths=(64,), batch_sizes=(1,), device="cuda")
    result = run_profile(s, progress=False)
    assert result.largest_batches["torch"][64] >= 1

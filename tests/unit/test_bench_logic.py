"""The benchmark's logic without load: schedules, workloads, statistics, the JSON file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from squeezer.bench.loadgen import Record, poisson_schedule, split
from squeezer.bench.report import (
    SCHEMA_VERSION,
    BenchResult,
    plot,
    read_json,
    summarize,
    write_json,
)
from squeezer.bench.run import RemoteTargetError, check_target
from squeezer.bench.workload import RouteKind, WorkloadSpec, build, load_texts, route_kind


def test_poisson_schedule_has_the_asked_mean_and_is_reproducible() -> None:
    times = poisson_schedule(rate=50.0, duration_s=200.0, seed=7, limit=None)
    gaps = np.diff([0.0, *times])
    assert abs(gaps.mean() - 1 / 50) < 0.001  # 10,000 arrivals: the mean within 5 %
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05  # exponential gaps: CV = 1
    assert all(0 < t < 200 for t in times) and times == sorted(times)
    assert times == poisson_schedule(50.0, 200.0, seed=7, limit=None)
    assert times != poisson_schedule(50.0, 200.0, seed=8, limit=None)
    assert len(poisson_schedule(50.0, 200.0, seed=7, limit=100)) == 100
    with pytest.raises(ValueError):
        poisson_schedule(0, 1, 0, None)


def test_shares_add_up() -> None:
    assert split(10, 3) == [4, 3, 3] and sum(split(64, 4)) == 64


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:8080/embed", RouteKind.TEI_EMBED),
        ("http://127.0.0.1:8080/predict", RouteKind.TEI_PREDICT),
        ("http://127.0.0.1:8080/rerank", RouteKind.TEI_RERANK),
        ("http://127.0.0.1:8080/v1/embeddings", RouteKind.OPENAI_EMBEDDINGS),
        ("http://127.0.0.1:8080/v1/chat/completions", RouteKind.OPENAI_CHAT),
        ("http://127.0.0.1:8080/v1/completions", RouteKind.OPENAI_COMPLETIONS),
        ("http://127.0.0.1:8080/generate_stream", RouteKind.TGI_STREAM),
        ("http://127.0.0.1:8080/", RouteKind.HF),
        ("http://127.0.0.1:8080/models/m", RouteKind.HF),
    ],
)
def test_route_kind_from_the_path(url: str, kind: RouteKind) -> None:
    assert route_kind(url) is kind


def test_unknown_routes_are_refused() -> None:
    with pytest.raises(ValueError, match="which API"):
        route_kind("http://127.0.0.1:8080/metrics")


def test_bodies_per_route() -> None:
    texts = load_texts(None)[:10]
    assert len(texts) == 10 and all(texts)
    spec = WorkloadSpec(batch_size=2, model="m", max_tokens=8)
    embed = build(RouteKind.OPENAI_EMBEDDINGS, texts, spec, count=3)
    assert json.loads(embed.bodies[0]) == {"model": "m", "input": texts[:2]}
    assert embed.items == [2, 2, 2] and len(embed.bodies) == 3
    predict = json.loads(build(RouteKind.TEI_PREDICT, texts, spec, 1).bodies[0])
    assert predict == {"inputs": [[texts[0]], [texts[1]]]}
    chat = json.loads(build(RouteKind.OPENAI_CHAT, texts, spec, 1).bodies[0])
    assert chat["stream"] and chat["max_tokens"] == 8 and chat["ignore_eos"]
    tgi = json.loads(build(RouteKind.TGI_STREAM, texts, spec, 1).bodies[0])
    assert tgi["parameters"] == {"max_new_tokens": 8, "ignore_eos": True}
    fixed = build(RouteKind.TEI_EMBED, texts, WorkloadSpec(lengths="fixed:7"), 4)
    assert all(len(json.loads(b)["inputs"].split()) == 7 for b in fixed.bodies)
    with pytest.raises(ValueError, match="--lengths"):
        build(RouteKind.TEI_EMBED, texts, WorkloadSpec(lengths="gauss:3"), 1)


def test_counts_add_up_and_percentiles_are_ordered() -> None:
    records = [Record(0.0, 0.010 + i / 1000, 200, 1, 10) for i in range(90)]
    records += [Record(0.0, 0.001, 429, 1, 10) for _ in range(7)]
    records += [Record(0.0, 0.5, 0, 1, 10) for _ in range(3)]
    stats = summarize("c=4", records, 2.0, concurrency=4)
    assert stats.sent == 100 == stats.ok + sum(stats.errors.values())
    assert stats.errors == {"0": 3, "429": 7} and stats.rejected_429 == 7
    lat = stats.latency_ms
    assert lat is not None and lat.p50 <= lat.p90 <= lat.p99 <= lat.max
    assert stats.requests_per_s == 45.0 and stats.ttft_ms is None


def test_streamed_records_give_ttft_itl_and_tokens_per_s() -> None:
    records = [Record(0, 0.3, 200, 1, 5, ttft_s=0.1, tokens=5, gaps_s=[0.05] * 4)] * 4
    stats = summarize("1/s", records, 2.0, rate=1.0)
    assert stats.ttft_ms is not None and np.isclose(stats.ttft_ms.p50, 100)
    assert stats.itl_ms is not None and np.isclose(stats.itl_ms.p99, 50)
    assert stats.tokens_per_s == 10.0


def test_result_file_round_trips_and_is_drawn(tmp_path: Path) -> None:
    level = summarize("c=1", [Record(0, 0.01, 200, 1, 5)], 1.0, concurrency=1)
    result = BenchResult("http://x/embed", "tei-embed", "closed", {}, {}, {}, [level], [level])
    write_json(result, tmp_path / "a.json")
    data = read_json(tmp_path / "a.json")
    assert data["schema_version"] == SCHEMA_VERSION
    assert set(data) == {
        "target", "route", "mode", "machine", "workload", "generator", "levels", "ceiling",
        "schema_version",
    }  # fmt: skip
    assert set(data["levels"][0]) >= {"sent", "ok", "errors", "rejected_429", "latency_ms"}
    plot([("a", data), ("b", data)], tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "old.json").write_text(json.dumps({**data, "schema_version": 0}))
    with pytest.raises(ValueError, match="schema_version"):
        read_json(tmp_path / "old.json")


def test_remote_targets_need_consent() -> None:
    check_target("http://127.0.0.1:8080/embed", allow_remote=False)
    check_target("http://localhost:8080/embed", allow_remote=False)
    check_target("http://[::1]:8080/embed", allow_remote=False)
    with pytest.raises(RemoteTargetError, match="--allow-remote"):
        check_target("http://10.1.2.3:8080/embed", allow_remote=False)
    check_target("http://10.1.2.3:8080/embed", allow_remote=True)

"""``squeezer bench`` against real HTTP servers in this process (uvicorn threads): the
tiny-model app, and a minimal streaming app standing in for generation routes."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from tokenizers import Tokenizer
from typer.testing import CliRunner

from squeezer.bench.loadgen import poisson_schedule
from squeezer.bench.report import read_json
from squeezer.bench.run import BenchSettings, run_bench
from squeezer.bench.workload import WorkloadSpec, load_texts
from squeezer.cli import app as cli
from squeezer.server.app import create_app
from tests.integration.conftest import settings_for

TOKEN_DELAY_S = 0.004


def _serve(asgi: object) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(asgi, port=port, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def short_texts(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """Corpus sentences that fit the tiny model's 64 tokens (longer ones are a 422)."""
    tokenizer = Tokenizer.from_file(str(tiny_bert / "tokenizer.json"))
    texts = [t for t in load_texts(None) if len(tokenizer.encode(t).ids) <= 64]
    path = tmp_path_factory.mktemp("texts") / "short.txt"
    path.write_text("\n".join(texts))
    return path


@pytest.fixture(scope="module")
def tiny_url(tiny_bert: Path) -> Iterator[str]:
    yield from _serve(create_app(settings_for({"tiny": tiny_bert}, max_concurrent_requests=6)))


async def _chat(request: Request) -> StreamingResponse:
    body = await request.json()

    async def events() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.02)  # "prefill"
        for _ in range(body["max_tokens"]):
            yield b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n'
            await asyncio.sleep(TOKEN_DELAY_S)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def streaming_url() -> Iterator[str]:
    yield from _serve(Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"])]))


def test_closed_loop_counts_add_up_with_the_generator_ceiling(
    tiny_url: str, short_texts: Path
) -> None:
    s = BenchSettings(
        texts=short_texts,
        target=f"{tiny_url}/embed",
        concurrency=(1, 4),
        duration_s=1.5,
        warmup_s=0.5,
        workers=2,
    )
    result = run_bench(s)
    assert [lv.label for lv in result.levels] == ["c=1", "c=4"]
    for lv in result.levels:
        assert lv.sent == lv.ok + sum(lv.errors.values()) and lv.ok > 0 and not lv.errors
        assert lv.latency_ms is not None and lv.latency_ms.p50 <= lv.latency_ms.p99
    assert [lv.label for lv in result.ceiling] == ["c=1", "c=4"]
    assert result.ceiling[0].ok > 0 and result.generator["workers"] == 2


def test_overload_is_counted_apart(tiny_url: str, short_texts: Path) -> None:
    s = BenchSettings(
        texts=short_texts,
        target=f"{tiny_url}/embed",
        concurrency=(24,),
        duration_s=1.5,
        warmup_s=0,
        workers=2,
        workload=WorkloadSpec(batch_size=8),
        ceiling=False,
    )
    level = run_bench(s).levels[0]
    assert level.rejected_429 > 0 and level.errors["429"] == level.rejected_429
    assert level.sent == level.ok + sum(level.errors.values())


def test_open_loop_sends_the_poisson_schedule(tiny_url: str, short_texts: Path) -> None:
    s = BenchSettings(
        texts=short_texts,
        target=f"{tiny_url}/embed",
        rates=(20.0,),
        duration_s=1.5,
        warmup_s=0,
        workers=2,
        ceiling=False,
    )
    level = run_bench(s).levels[0]
    assert level.sent == len(poisson_schedule(20.0, 1.5, seed=0, limit=None))
    assert level.offered_rate == 20.0 and level.ok == level.sent


def test_streaming_routes_give_time_to_first_token_and_between_tokens(
    streaming_url: str,
) -> None:
    s = BenchSettings(
        target=f"{streaming_url}/v1/chat/completions",
        concurrency=(2,),
        duration_s=1.0,
        warmup_s=0,
        workers=1,
        workload=WorkloadSpec(max_tokens=6),
    )
    result = run_bench(s)
    level, ceiling = result.levels[0], result.ceiling[0]
    assert level.ok > 0 and level.ttft_ms is not None and level.itl_ms is not None
    assert level.ttft_ms.p50 >= 20 and level.itl_ms.p50 >= TOKEN_DELAY_S * 1000 * 0.8
    assert level.tokens_per_s is not None
    assert abs(level.tokens_per_s - 6 * level.requests_per_s) < 1e-6
    assert ceiling.tokens_per_s is not None and ceiling.ok > 0  # the no-op server streams too


def test_in_process_target_needs_no_http(tiny_bert: Path, short_texts: Path) -> None:
    s = BenchSettings(
        target=str(tiny_bert), concurrency=(2,), duration_s=1.0, max_requests=40, texts=short_texts
    )
    level = run_bench(s).levels[0]
    assert level.sent == level.ok == 40 and run_bench(s).generator["kind"] == "in-process"


def test_cli_writes_json_and_png_and_compares(
    tiny_url: str, tmp_path: Path, short_texts: Path
) -> None:
    runner = CliRunner()
    args = ["bench", f"{tiny_url}/v1/embeddings", "--concurrency", "2", "--duration", "1"]
    args += ["--warmup", "0", "--texts", str(short_texts)]
    first = runner.invoke(cli, [*args, "--no-ceiling", "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    data = read_json(tmp_path / "a.json")
    assert data["route"] == "openai-embeddings" and data["levels"][0]["ok"] > 0
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    both = runner.invoke(
        cli, ["bench", "--compare", str(tmp_path / "a.json"), "--out", str(tmp_path / "c")]
    )
    assert both.exit_code == 0, both.output
    assert (tmp_path / "c.png").exists()
    remote = runner.invoke(cli, ["bench", "http://10.9.9.9:1/embed", "--duration", "1"])
    assert remote.exit_code == 2 and "--allow-remote" in remote.output

"""``squeezer serve --ray`` as a user runs it: the real process on a local Ray (behind
Ray's proxy, and with ``--ray-haproxy``), spoken to with ``openai`` and
``huggingface_hub``'s ``InferenceClient``, stopped with SIGTERM while a stream is
running: the stream completes (Ray Serve drains each replica), and the process exits
0 with no Ray process of its own left. A Ray flag without ``--ray`` is refused."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import openai
import psutil
import pytest
from huggingface_hub import InferenceClient

from tests.e2e.conftest import start_server, tiny_and_llama

pytestmark = pytest.mark.e2e


def _ray_daemons() -> set[int]:
    """Ray's per-cluster processes on this machine (a local Ray starts its own)."""
    names = {"raylet", "gcs_server"}
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in names}


@pytest.mark.parametrize("proxy", [[], ["--ray-haproxy"]], ids=["ray-proxy", "haproxy"])
def test_serve_ray_answers_real_clients_and_drains_on_sigterm(
    proxy: list[str], tiny_bert: Path, tiny_llama: Path, tmp_path: Path
) -> None:
    before = _ray_daemons()
    server = start_server(
        ["--ray", *proxy, "--replica-cpus", "0", "--shutdown-timeout", "30",
         *tiny_and_llama(tiny_bert, tiny_llama)],
        tmp_path / "serve.log",
    )  # fmt: skip
    try:
        vector = InferenceClient(base_url=server.url).feature_extraction("hello ray")
        assert vector.shape[-1] == 32
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        assert len(client.embeddings.create(model="tiny", input=["a", "b"]).data) == 2
        stream = client.completions.create(
            model="llama",
            prompt="one",
            max_tokens=200,
            extra_body={"ignore_eos": True},
            stream=True,
        )
        first = next(iter(stream))
        assert first.choices[0].text is not None
        # SIGTERM while the stream runs: the rest still arrives.
        stopping = threading.Thread(target=server.terminate, kwargs={"timeout": 120})
        stopping.start()
        rest = list(stream)
        assert rest[-1].choices[0].finish_reason == "length"
        stopping.join(timeout=130)
    finally:
        code = server.terminate(timeout=120)
    log = server.output()
    assert code == 0, log
    assert "draining the Ray Serve application" in log
    deadline = time.monotonic() + 30
    while _ray_daemons() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_daemons() - before


def test_ray_flags_without_ray_are_refused() -> None:
    from typer.testing import CliRunner

    from squeezer.cli import app

    result = CliRunner().invoke(app, ["serve", "--replicas", "2", "--ray-haproxy"])
    assert result.exit_code == 2
    assert "--replicas, --ray-haproxy take effect with --ray only" in result.output

"""Model versions on the real server with real clients: Triton's repository API
through ``tritonclient.http``, ``openai`` naming ``name@alias``, and the ``squeezer
models`` command, on two API processes in front of one engine, while embeddings and
streamed chats run without pause."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import start_server

pytestmark = pytest.mark.e2e
ADMIN = {"Authorization": "Bearer admin"}


def _models_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "squeezer", "models", *args[:1], url, *args[1:]],
        capture_output=True,
        text=True,
        env={"SQUEEZER_ADMIN_API_KEY": "admin", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


class Load:
    """Embeddings and streamed chats in threads; each answer is checked against the
    first answer its version (``X-Model-Version``) gave."""

    def __init__(self, url: str) -> None:
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
        self.stop = threading.Event()
        self.first: dict[tuple[str, str], Any] = {}
        self.failures: list[str] = []
        self.counts = {"embed": 0, "chat": 0}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._embed) for _ in range(2)]
        self.threads += [threading.Thread(target=self._chat) for _ in range(2)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _check(self, kind: str, version: str, answer: Any) -> None:
        with self.lock:
            self.counts[kind] += 1
            first = self.first.setdefault((kind, version), answer)
            same = np.allclose(first, answer, atol=1e-5) if kind == "embed" else first == answer
            if not same:
                self.failures.append(f"{kind} from version {version} changed: {answer!r}")

    def _embed(self) -> None:
        while not self.stop.is_set():
            try:
                raw = self.client.embeddings.with_raw_response.create(
                    model="tiny", input=["a swap drops nothing"]
                )
                vector = np.array(raw.parse().data[0].embedding)
                self._check("embed", raw.headers["x-model-version"], vector)
            except Exception as e:  # every failure is counted, none is fatal here
                with self.lock:
                    self.failures.append(f"embed: {type(e).__name__}: {e}")

    def _chat(self) -> None:
        while not self.stop.is_set():
            try:
                with self.client.chat.completions.with_streaming_response.create(
                    model="llama@default",
                    messages=[{"role": "user", "content": "swap"}],
                    max_tokens=10,
                    temperature=0,
                    stream=True,
                ) as raw:
                    text = "".join(
                        chunk.choices[0].delta.content or ""
                        for chunk in raw.parse()
                        if chunk.choices
                    )
                    self._check("chat", raw.headers["x-model-version"], text)
            except Exception as e:
                with self.lock:
                    self.failures.append(f"chat: {type(e).__name__}: {e}")


def test_triton_repository_swaps_with_api_workers_drop_nothing(
    tiny_bert: Path,
    tiny_bert_cls: Path,
    tiny_llama: Path,
    tiny_llama_b: Path,
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_bert, repo / "tiny" / "1")
    shutil.copytree(tiny_llama, repo / "llama" / "1")
    args = ["--model-repository", str(repo), "--api-workers", "2", "--admin-api-key", "admin",
            "--max-total-tokens", "256", "--max-loaded-models", "3"]  # fmt: skip
    server = start_server(args, tmp_path / "server.log")
    try:
        repository = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
        index = repository.get_model_repository_index(headers=ADMIN)
        assert {(m["name"], m["version"], m["state"]) for m in index} == {
            ("tiny", "1", "READY"),
            ("llama", "1", "READY"),
        }
        with pytest.raises(InferenceServerException):  # the admin key is needed
            repository.get_model_repository_index()

        with Load(server.url) as load:
            swaps = [("2", tiny_bert_cls, tiny_llama_b), ("3", tiny_bert, tiny_llama)]
            for version, tiny, llama in swaps:
                shutil.copytree(tiny, repo / "tiny" / version)
                shutil.copytree(llama, repo / "llama" / version)
                repository.load_model("tiny", headers=ADMIN)
                repository.load_model("llama", headers=ADMIN)
        assert load.failures == [], load.failures[:5]
        assert load.counts["embed"] > 5 and load.counts["chat"] > 5, load.counts
        seen = {key for key in load.first}
        assert ("embed", "3") in seen and ("chat", "3") in seen, seen
        if ("embed", "1") in seen and ("embed", "2") in seen:
            assert not np.allclose(load.first[("embed", "1")], load.first[("embed", "2")])

        states = {
            (m["name"], m["version"]): m["state"]
            for m in repository.get_model_repository_index(headers=ADMIN)
        }
        assert states[("tiny", "3")] == "READY" and states[("tiny", "1")] == "UNAVAILABLE"
        assert states[("llama", "2")] == "UNAVAILABLE"

        # The CLI: an alias, then a request that names it through the openai client.
        moved = _models_cli(server.url, "alias", "tiny@canary", "3")
        assert moved.returncode == 0, moved.stderr
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)
        raw = client.embeddings.with_raw_response.create(model="tiny@canary", input="x")
        assert raw.headers["x-model-version"] == "3"
        listed = _models_cli(server.url, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        tiny = next(m for m in json.loads(listed.stdout)["models"] if m["name"] == "tiny")
        assert tiny["aliases"] == {"default": "3", "canary": "3"}
        refused = _models_cli(server.url, "unload", "tiny:3")
        assert refused.returncode == 1 and "409" in refused.stderr

        # Residency (3 versions at most): tiny:1 and then tiny:2; the least recently
        # used version that no alias names goes, and a request for it (through an API
        # process) brings it back.
        for version in ("1", "2"):
            loaded = _models_cli(server.url, "load", f"tiny:{version}")
            assert loaded.returncode == 0, loaded.stderr
        listed = json.loads(_models_cli(server.url, "list", "--json").stdout)
        tiny = next(m for m in listed["models"] if m["name"] == "tiny")
        states = {v["version"]: v["state"] for v in tiny["versions"]}
        assert states == {"1": "evicted", "2": "ready", "3": "ready"}, states
        for _ in range(100):
            try:
                raw = client.embeddings.with_raw_response.create(model="tiny:1", input="x")
                break
            except openai.APIStatusError as e:
                assert e.status_code == 503 and e.response.headers["retry-after"] == "2"
                time.sleep(0.1)
        assert raw.headers["x-model-version"] == "1"

        repository.unload_model("llama", headers=ADMIN)
        with pytest.raises(openai.APIStatusError) as gone:
            client.chat.completions.create(
                model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        assert gone.value.status_code == 503
    finally:
        code = server.terminate()
    assert code == 0, server.output()

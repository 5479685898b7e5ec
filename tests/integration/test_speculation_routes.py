"""Speculative decoding over HTTP: the same tokens as without it, for a crowd of
greedy, seeded and penalized requests, and its acceptance on /metrics."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from squeezer.config import ModelSettings, Settings

#: Prompts that repeat themselves, so prompt lookup has something to draft from.
PROMPTS = [
    "the cat sat on the mat. the cat sat on the mat. the cat",
    "If the",
    "one two three one two three one two",
    "Functions are objects. Functions are objects. Functions",
]
REQUESTS: list[dict[str, Any]] = [
    {"max_new_tokens": 40},
    {"max_new_tokens": 30, "do_sample": True, "temperature": 0.8, "seed": 3},
    {"max_new_tokens": 25, "repetition_penalty": 1.2},
    {"max_new_tokens": 35, "do_sample": True, "top_p": 0.9, "seed": 9, "top_n_tokens": 2},
]


async def _crowd(client: httpx.AsyncClient) -> list[list[int]]:
    async def one(prompt: str, params: dict[str, Any]) -> list[int]:
        r = await client.post(
            "/generate", json={"inputs": prompt, "parameters": {"details": True, **params}}
        )
        assert r.status_code == 200, r.text
        return [t["id"] for t in r.json()["details"]["tokens"]]

    return list(await asyncio.gather(*(one(p, q) for p, q in zip(PROMPTS, REQUESTS, strict=True))))


@pytest.mark.parametrize("kv_cache", ["slots", "paged"])
async def test_speculation_changes_no_token_and_reports_its_acceptance(
    make_async_client: Any, tiny_llama: Path, kv_cache: str
) -> None:
    def settings(**kw: Any) -> Settings:
        return Settings(
            models=[ModelSettings(name="llama", path=str(tiny_llama))],
            max_total_tokens=256,
            max_num_seqs=8,
            kv_cache=kv_cache,
            **kw,
        )

    plain = await _crowd(await make_async_client(settings()))
    config = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1}
    fast = await make_async_client(settings(speculative_config=json.dumps(config)))
    assert await _crowd(fast) == plain
    text = (await fast.get("/metrics")).text
    drafted = re.search(r'squeezer_spec_decode_num_draft_tokens_total\{model="llama"\} (\S+)', text)
    accepted = re.search(
        r'squeezer_spec_decode_num_accepted_tokens_total\{model="llama"\} (\S+)', text
    )
    assert drafted and accepted
    assert float(drafted.group(1)) > 0 and 0 <= float(accepted.group(1)) <= float(drafted.group(1))


def test_a_bad_speculative_config_is_refused_at_start() -> None:
    from typer.testing import CliRunner

    from squeezer.cli import app

    result = CliRunner().invoke(
        app, ["serve", "--speculative-config", '{"method": "eagle"}', "--port", "1"]
    )
    assert result.exit_code == 2
    assert "speculative method" in result.output

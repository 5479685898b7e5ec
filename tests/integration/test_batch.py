"""Batch jobs in-process: each task's rows equal what the server answers for the same
text, in JSONL and Parquet; bad rows become error rows; a job stopped part-way
resumes without redoing or repeating a row; an OpenAI batch file is answered line by
line as the server's routes answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from squeezer.batch.job import BatchJob, run_batch, run_batch_async
from squeezer.batch.rows import InputFormat
from squeezer.batch.work import TaskOptions
from squeezer.errors import ConflictError
from squeezer.types import Task
from tests.integration.conftest import settings_for
from tests.tiny_models import corpus

#: Sentences the tiny models take whole (none needs truncation).
TEXTS = [t for t in corpus() if len(t) < 120][:40]


def _rows(path: Path, texts: list[str], **extra: Any) -> Path:
    with path.open("w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"key": f"k{i}", "text": text, **extra}) + "\n")
    return path


def _job(tmp_path: Path, models: dict[str, Path], **kw: Any) -> BatchJob:
    defaults: dict[str, Any] = {
        "input": tmp_path / "in.jsonl",
        "output": tmp_path / "out.jsonl",
        "settings": settings_for(models, max_total_tokens=128, warmup=False),
        "format": InputFormat.JSONL,
        "id_column": "key",
        "progress": False,
        "part_size": 8,
    }
    return BatchJob(**{**defaults, **kw})


async def _served(make_async_client: Any, models: dict[str, Path]) -> httpx.AsyncClient:
    client: httpx.AsyncClient = await make_async_client(
        settings_for(models, max_total_tokens=128, warmup=False)
    )
    return client


async def test_embeddings_equal_the_servers_in_jsonl_and_parquet(
    tmp_path: Path, tiny_bert: Path, make_async_client: Any
) -> None:
    _rows(tmp_path / "in.jsonl", TEXTS)
    options = TaskOptions(Task.EMBED)
    report = await run_batch_async(
        _job(tmp_path, {"bert": tiny_bert}, options=options, model="bert")
    )
    assert (report.rows, report.errors, report.resumed) == (40, 0, 0)
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [f"k{i}" for i in range(40)]
    client = await _served(make_async_client, {"bert": tiny_bert})
    served = (await client.post("/embed", json={"inputs": TEXTS})).json()
    got = np.array([line["embedding"] for line in lines])
    # Batches form differently offline: fp32 sums in another order, within 1e-5.
    assert np.allclose(got, np.array(served), atol=1e-5)

    parquet = tmp_path / "out.parquet"
    await run_batch_async(
        _job(tmp_path, {"bert": tiny_bert}, options=options, model="bert", output=parquet)
    )
    table = pq.read_table(parquet)
    assert table.schema.field("embedding").type.list_size == got.shape[1]
    assert np.allclose(np.array(table.column("embedding").to_pylist()), got, atol=1e-5)
    report_file = json.loads((tmp_path / "out.parquet.report.json").read_text())
    assert report_file["rows"] == 40 and report_file["rows_per_s"] > 0


async def test_classify_pairs_and_generate_equal_the_server(
    tmp_path: Path,
    tiny_classifier: Path,
    tiny_llama: Path,
    make_async_client: Any,
) -> None:
    _rows(tmp_path / "in.jsonl", TEXTS[:6], pair="a second text")
    options = TaskOptions(Task.CLASSIFY, pair_column="pair")
    await run_batch_async(_job(tmp_path, {"cls": tiny_classifier}, options=options, model="cls"))
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    client = await _served(make_async_client, {"cls": tiny_classifier, "llama": tiny_llama})
    pairs = [[t, "a second text"] for t in TEXTS[:6]]
    served = (await client.post("/predict", json={"inputs": pairs})).json()
    for line, want in zip(lines, served, strict=True):
        got = {x["label"]: x["score"] for x in line["labels"]}
        assert got == pytest.approx({x["label"]: x["score"] for x in want}, abs=1e-5)

    out = tmp_path / "gen.jsonl"
    options = TaskOptions(Task.GENERATE, max_new_tokens=6)
    await run_batch_async(
        _job(tmp_path, {"llama": tiny_llama}, options=options, model="llama", output=out)
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    for line, text in zip(lines, TEXTS[:6], strict=True):
        params = {"max_new_tokens": 6}
        served_text = (
            await client.post("/generate", json={"inputs": text, "parameters": params})
        ).json()["generated_text"]
        assert line["text"] == served_text and line["error"] is None


def test_bad_rows_are_error_rows_and_max_errors_stops_the_job(
    tmp_path: Path, tiny_bert: Path
) -> None:
    path = tmp_path / "in.jsonl"
    with path.open("w") as f:
        for i in range(30):
            f.write(json.dumps({"key": f"k{i}", "text": "" if i % 3 == 0 else TEXTS[i]}) + "\n")
    options = TaskOptions(Task.EMBED)
    report = run_batch(_job(tmp_path, {"bert": tiny_bert}, options=options, model="bert"))
    assert report.errors == 10 and not report.stopped_early
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    errors = [line for line in lines if line["error"]]
    assert len(errors) == 10 and "text" in errors[0]["error"] and "embedding" not in errors[0]

    stopped = tmp_path / "stopped.jsonl"
    report = run_batch(
        _job(
            tmp_path,
            {"bert": tiny_bert},
            options=options,
            model="bert",
            output=stopped,
            max_errors=2,
        )
    )
    assert report.stopped_early and not stopped.exists()  # parts kept for a rerun


def test_a_stopped_job_resumes_without_redoing_rows(tmp_path: Path, tiny_bert: Path) -> None:
    """The first run stops early (max_errors) after committing some parts; the rerun
    does only the rest, and the output holds each row exactly once."""
    path = tmp_path / "in.jsonl"
    with path.open("w") as f:
        for i in range(40):
            f.write(json.dumps({"key": f"k{i}", "text": "" if i == 3 else TEXTS[i]}) + "\n")
    options = TaskOptions(Task.EMBED)
    first = run_batch(
        _job(tmp_path, {"bert": tiny_bert}, options=options, model="bert", max_errors=0)
    )
    assert first.stopped_early
    second = run_batch(_job(tmp_path, {"bert": tiny_bert}, options=options, model="bert"))
    assert second.resumed == 8 and second.rows == 40  # the first part (8 rows) was kept
    ids = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert ids == [f"k{i}" for i in range(40)]


def test_another_model_does_not_mix_into_a_jobs_parts(
    tmp_path: Path, tiny_bert: Path, tiny_bert_cls: Path
) -> None:
    _rows(tmp_path / "in.jsonl", ["", *TEXTS[:19]])  # row 0 is an error: stop there
    options = TaskOptions(Task.EMBED)
    first = run_batch(
        _job(tmp_path, {"bert": tiny_bert}, options=options, model="bert", max_errors=0)
    )
    assert first.stopped_early and (tmp_path / "out.jsonl.parts").is_dir()
    other = _job(tmp_path, {"bert": tiny_bert_cls}, options=options, model="bert")
    with pytest.raises(ConflictError, match="model_fingerprint"):
        run_batch(other)
    report = run_batch(
        _job(tmp_path, {"bert": tiny_bert_cls}, options=options, model="bert", force=True)
    )
    assert report.resumed == 0 and report.rows == 20


async def test_an_openai_batch_file_is_answered_as_the_routes_answer(
    tmp_path: Path, tiny_bert: Path, tiny_llama: Path, make_async_client: Any
) -> None:
    lines = [
        {"custom_id": "e1", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "bert", "input": ["hello there", "general kenobi"]}},
        {"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "llama", "messages": [{"role": "user", "content": "hi"}],
                  "max_tokens": 5, "temperature": 0}},
        {"custom_id": "p1", "method": "POST", "url": "/v1/completions",
         "body": {"model": "llama", "prompt": "Functions are", "max_tokens": 4, "temperature": 0}},
        {"custom_id": "bad-field", "method": "POST", "url": "/v1/completions",
         "body": {"model": "llama", "prompt": "x", "bogus": 1}},
        {"custom_id": "bad-url", "method": "POST", "url": "/v1/rerank", "body": {}},
        {"custom_id": "stream", "method": "POST", "url": "/v1/completions",
         "body": {"model": "llama", "prompt": "x", "stream": True}},
    ]  # fmt: skip
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    models = {"bert": tiny_bert, "llama": tiny_llama}
    job = _job(tmp_path, models, input=path, format=InputFormat.OPENAI, id_column=None)
    report = await run_batch_async(job)
    assert report.rows == 6 and report.errors == 3
    out = {
        o["custom_id"]: o
        for o in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())
    }
    assert list(out) == [line["custom_id"] for line in lines]
    client = await _served(make_async_client, models)
    for line in lines[:3]:
        want = (await client.post(line["url"], json=line["body"])).json()
        got = out[line["custom_id"]]
        assert got["id"].startswith("batch_req_") and got["error"] is None
        assert got["response"]["status_code"] == 200
        body = got["response"]["body"]
        assert body["object"] == want["object"] and body["usage"] == want["usage"]
        if "choices" in want:
            assert [c.get("text") or c["message"]["content"] for c in body["choices"]] == [
                c.get("text") or c["message"]["content"] for c in want["choices"]
            ]
    assert out["bad-field"]["response"]["status_code"] == 400
    assert out["bad-field"]["response"]["body"]["error"]["param"] == "bogus"
    assert out["bad-url"]["response"] is None and "/v1/rerank" in out["bad-url"]["error"]["message"]
    assert "stream" in out["stream"]["error"]["message"]

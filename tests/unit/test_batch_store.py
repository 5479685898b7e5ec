"""A batch job's parts: whole or absent, keyed to their job, merged once in order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from squeezer.batch.rows import InputFormat, read_rows
from squeezer.batch.store import JobKey, PartStore
from squeezer.errors import ConflictError, InvalidRequestError

KEY = JobKey("m:1:abc", "params", "input")


def _record(i: int) -> dict[str, object]:
    return {"id": f"r{i}", "index": i, "result": {"x": i}, "error": None}


def test_parts_resume_and_merge_in_input_order(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    store = PartStore(out)
    assert store.open(KEY, force=False) == set()
    store.commit([_record(2), _record(0)])
    (store.parts / ".part-x.jsonl.tmp").write_text("half a line")  # a killed write
    again = PartStore(out)
    assert again.open(KEY, force=False) == {"r0", "r2"}
    assert not list(again.parts.glob(".*.tmp"))  # the stale part is gone
    again.commit([_record(1)])

    def write(records: list[dict[str, object]], path: Path) -> None:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))

    assert again.merge(write) == 3
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["r0", "r1", "r2"]
    assert not again.parts.exists()


def test_another_job_is_refused_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    PartStore(out).open(KEY, force=False)
    PartStore(out).commit([_record(0)])
    other = JobKey("m:2:def", "params", "input")
    with pytest.raises(ConflictError, match="model_fingerprint"):
        PartStore(out).open(other, force=False)
    assert PartStore(out).open(other, force=True) == set()  # discarded, started anew


def test_rows_get_ids_and_duplicates_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\nnot json\n')
    rows = list(read_rows(path, InputFormat.JSONL, None))
    assert [(r.id, r.index) for r in rows] == [("0", 0), ("1", 1), ("2", 2)]
    assert "_unreadable" in rows[2].record  # becomes an error row, not a crash
    path.write_text('{"id": 1}\n{"id": 1}\n')
    with pytest.raises(InvalidRequestError, match="twice"):
        list(read_rows(path, InputFormat.JSONL, "id"))
    csv = tmp_path / "in.csv"
    csv.write_text("key,text\nk1,hello\nk2,world\n")
    assert InputFormat.of(csv) is InputFormat.CSV
    assert [r.id for r in read_rows(csv, InputFormat.CSV, "key")] == ["k1", "k2"]
    openai = tmp_path / "batch.jsonl"
    openai.write_text('{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}\n')
    assert InputFormat.of(openai) is InputFormat.OPENAI

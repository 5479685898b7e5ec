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


def test_many_unsorted_parts_merge_in_rounds_into_input_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts as Ray's actors leave them (unordered, positions unknown) merge k-way in
    rounds of at most _FAN_IN open runs, into input order."""
    from squeezer.batch import store as store_module

    monkeypatch.setattr(store_module, "_FAN_IN", 3)
    out = tmp_path / "out.jsonl"
    store = PartStore(out)
    store.open(KEY, force=False)
    ids = [f"r{i}" for i in range(50)]
    shuffled = ids[::7] + [i for i in ids if i not in ids[::7]]
    for start in range(0, 50, 4):
        chunk = shuffled[start : start + 4][::-1]
        store.commit([{"id": i, "index": -1, "result": {}, "error": None} for i in chunk])
    written: list[str] = []

    def write(records: object, path: Path) -> None:
        written.extend(r["id"] for r in records)  # type: ignore[attr-defined]
        path.write_text("done")

    assert store.merge(write, {i: n for n, i in enumerate(ids)}) == 50
    assert written == ids and not store.parts.exists()


def test_parquet_is_written_in_row_groups_with_error_rows_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    from squeezer.batch import job

    monkeypatch.setattr(job, "_ROW_GROUP", 4)
    records = [
        {"id": f"r{i}", "index": i, "result": None if i < 6 else {"embedding": [float(i)] * 3},
         "error": "bad" if i < 6 else None}
        for i in range(13)
    ]  # fmt: skip
    job._write_parquet(iter(records), tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.num_rows == 13 and table.schema.field("embedding").type.list_size == 3
    assert table.column("embedding").to_pylist()[12] == [12.0] * 3
    assert table.column("error").to_pylist()[:6] == ["bad"] * 6
    assert pq.ParquetFile(tmp_path / "out.parquet").num_row_groups >= 3

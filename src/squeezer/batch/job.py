"""A batch job from input file to output file: resumable, with progress and a report.

The models load as ``serve`` loads them (the same settings, sources and artifacts);
rows not yet committed run through them a window at a time, and every
``part_size`` results are committed as one part (``store``). Bad rows become error
rows and the job goes on, until ``max_errors``. When every row is committed, the
parts are merged into the output (JSONL, or Parquet with embeddings as a fixed-size
list column) and a report is written beside it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from squeezer.batch.rows import InputFormat, file_hash, read_rows
from squeezer.batch.store import JobKey, PartStore
from squeezer.batch.work import TaskOptions, Worker, openai_worker, task_worker
from squeezer.config import Settings
from squeezer.errors import InvalidRequestError
from squeezer.server.app import create_app
from squeezer.server.runtime import Runtime


@dataclass(frozen=True, slots=True)
class BatchJob:
    input: Path
    output: Path
    settings: Settings
    format: InputFormat
    #: None for an OpenAI batch file (each line names its model and route).
    options: TaskOptions | None = None
    model: str | None = None
    id_column: str | None = None
    #: Rows run at once (the engine batches them); results per committed part.
    window: int = 256
    part_size: int = 512
    max_errors: int | None = None
    force: bool = False
    progress: bool = True


@dataclass(slots=True)
class BatchReport:
    rows: int = 0
    #: Rows already committed by an earlier run of this job, skipped in this one.
    resumed: int = 0
    errors: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    #: Of ``wall_s``, the models' load (local jobs; a Ray job's actors load their own).
    load_s: float = 0.0
    stopped_early: bool = False
    first_errors: list[dict[str, Any]] = field(default_factory=list)

    def count(self, row_id: str, error: str | None, tokens: int) -> None:
        self.tokens += tokens
        if error is not None:
            self.errors += 1
            if len(self.first_errors) < 10:
                self.first_errors.append({"id": row_id, "error": error})

    @property
    def rows_per_s(self) -> float:
        """Rows this run computed per second of computing (the load left out, as the
        progress bar leaves it out)."""
        busy = self.wall_s - self.load_s
        return (self.rows - self.resumed) / busy if busy > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        busy = self.wall_s - self.load_s
        tokens_per_s = self.tokens / busy if busy > 0 else 0.0
        return {
            **asdict(self),
            "rows_per_s": round(self.rows_per_s, 2),
            "tokens_per_s": round(tokens_per_s, 1),
        }


def _parameters(job: BatchJob) -> str:
    """A hash of what decides the results besides the model and the input."""
    described = {
        "options": None if job.options is None else asdict(job.options),
        "model": job.model,
        "id_column": job.id_column,
        "format": job.format.value,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def job_key(job: BatchJob, fingerprints: dict[str, str]) -> JobKey:
    """The job's identity: its models' fingerprints (by name), its parameters and its
    input's hash. The same for a local and a Ray run of one job."""
    models = ",".join(sorted(f"{name}:{digest}" for name, digest in fingerprints.items()))
    return JobKey(models, _parameters(job), file_hash(job.input))


def writer_for(job: BatchJob) -> Any:
    """How merged records become the output file."""
    if job.output.suffix.lower() in (".parquet", ".pq"):
        if job.format is InputFormat.OPENAI:
            raise InvalidRequestError("an OpenAI batch job writes JSONL, not Parquet")
        return _write_parquet
    if job.format is InputFormat.OPENAI:
        return _write_openai_jsonl
    return _write_jsonl


def _write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            line = {"id": r["id"], **(r["result"] or {}), "error": r["error"]}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")


def _write_openai_jsonl(records: Iterable[dict[str, Any]], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r["result"], ensure_ascii=False) + "\n")


def _write_parquet(records: Iterable[dict[str, Any]], path: Path) -> None:
    """Row groups of ``_ROW_GROUP`` records, so that memory holds one group. The
    schema is the first group's with a result in it (embeddings: a fixed-size list
    column); groups of error rows before it wait for it."""
    import pyarrow.parquet as pq

    writer: Any = None
    waiting: list[list[dict[str, Any]]] = []
    try:
        for group in _groups(records, _ROW_GROUP):
            if writer is None and not any(r["result"] for r in group):
                waiting.append(group)
                continue
            if writer is None:
                schema = _table(group).schema
                writer = pq.ParquetWriter(path, schema)
                for early in waiting:
                    writer.write_table(_table(early, schema))
                waiting = []
            writer.write_table(_table(group, writer.schema))
        if writer is None:  # no result at all: ids and errors
            rows = [r for group in waiting for r in group]
            pq.write_table(_table(rows), path)
    finally:
        if writer is not None:
            writer.close()


#: Records per Parquet row group.
_ROW_GROUP = 8192


def _groups(records: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    group: list[dict[str, Any]] = []
    for record in records:
        group.append(record)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _table(records: list[dict[str, Any]], schema: Any = None) -> Any:
    import pyarrow as pa

    results = [r["result"] or {} for r in records]
    columns: dict[str, Any] = {"id": pa.array([r["id"] for r in records], pa.string())}
    vectors = [res.get("embedding") for res in results]
    dims = {len(v) for v in vectors if v is not None}
    if schema is not None and "embedding" in schema.names:
        columns["embedding"] = pa.array(vectors, schema.field("embedding").type)
    elif dims:  # embeddings: one fixed-size list column
        (dim,) = dims
        columns["embedding"] = pa.array(vectors, pa.list_(pa.float32(), dim))
    else:
        keys = schema.names[1:-1] if schema is not None else sorted({k for r in results for k in r})
        for key in keys:
            kind = schema.field(key).type if schema is not None else None
            columns[key] = pa.array([res.get(key) for res in results], kind)
    columns["error"] = pa.array([r["error"] for r in records], pa.string())
    return pa.table(columns)


async def _run(job: BatchJob, report: BatchReport) -> None:
    app = create_app(job.settings)
    runtime: Runtime = app.state.runtime
    began = time.perf_counter()
    await runtime.start()
    report.load_s = round(time.perf_counter() - began, 3)
    try:
        store = PartStore(job.output)
        key = job_key(job, {m.name: m.info.content_hash for m in runtime.registry.loaded()})
        done = store.open(key, force=job.force)
        report.resumed = len(done)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://batch", timeout=None
        ) as client:
            worker = make_worker(job, runtime, client)
            await _drive(job, store, worker, done, report)
    finally:
        await runtime.stop()


def make_worker(job: BatchJob, runtime: Runtime, client: httpx.AsyncClient) -> Worker:
    if job.format is InputFormat.OPENAI:
        return openai_worker(client)
    assert job.options is not None
    model = runtime.registry.get(job.model, job.options.task)
    return task_worker(runtime, model, job.options)


async def _drive(
    job: BatchJob, store: PartStore, worker: Worker, done: set[str], report: BatchReport
) -> None:
    rows = list(read_rows(job.input, job.format, job.id_column))
    report.rows = len(rows)
    todo = [r for r in rows if r.id not in done]
    window = asyncio.Semaphore(job.window)

    async def one(row: Any) -> dict[str, Any]:
        async with window:
            outcome = await worker(row)
        report.count(row.id, outcome.error, outcome.tokens)
        return outcome.record(row)

    with RowProgress(job, report) as progress:
        for start in range(0, len(todo), job.part_size):
            part = todo[start : start + job.part_size]
            store.commit(list(await asyncio.gather(*(one(r) for r in part))))
            if progress.advance(len(part)):
                return


class RowProgress:
    """The job's progress bar (rows/s, tokens/s), and whether ``max_errors`` stops it."""

    def __init__(self, job: BatchJob, report: BatchReport, label: str = "rows") -> None:
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
        ]
        self.job, self.report = job, report
        self.bar = Progress(*columns, disable=not job.progress)
        self.task = self.bar.add_task(label, total=report.rows, completed=report.resumed, rate="")
        self.started, self.processed = time.perf_counter(), 0

    def __enter__(self) -> RowProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def advance(self, rows: int) -> bool:
        """``rows`` more are done; True when the job must stop (``max_errors``)."""
        self.processed += rows
        elapsed = time.perf_counter() - self.started
        tokens = self.report.tokens / elapsed
        rate = f"{self.processed / elapsed:.1f} rows/s, {tokens:.0f} tokens/s"
        self.bar.update(self.task, advance=rows, rate=rate)
        limit = self.job.max_errors
        self.report.stopped_early = limit is not None and self.report.errors > limit
        return self.report.stopped_early


def run_batch(job: BatchJob) -> BatchReport:
    """Run (or resume) ``job``; the output and ``OUTPUT.report.json`` when it
    completes. A job stopped by ``max_errors`` keeps its parts for a rerun."""
    return asyncio.run(run_batch_async(job))


async def run_batch_async(job: BatchJob) -> BatchReport:
    """``run_batch`` on a running event loop."""
    if job.format is not InputFormat.OPENAI and job.options is None:
        raise InvalidRequestError("a task job needs its task and columns")
    writer = writer_for(job)
    report = BatchReport()
    started = time.perf_counter()
    await _run(job, report)
    report.wall_s = round(time.perf_counter() - started, 3)
    if not report.stopped_early:
        PartStore(job.output).merge(writer)
    write_report(job, report)
    return report


def write_report(job: BatchJob, report: BatchReport) -> None:
    """``OUTPUT.report.json``: rows, errors, tokens, wall time and throughput."""
    path = job.output.with_name(job.output.name + ".report.json")
    path.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")


__all__ = ["BatchJob", "BatchReport", "run_batch", "run_batch_async"]

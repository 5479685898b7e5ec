"""``squeezer batch --ray``: the same job on Ray Data, on one machine or a cluster.

Ray Data reads the input (``read_json`` for rows, ``read_text`` for OpenAI batch files,
whose request bodies differ line to line and would not share one Arrow schema,
``read_csv``, ``read_parquet``), drops the ids already committed, and runs
``map_batches`` with an actor class that builds squeezer's runtime once per actor
(``ActorPoolStrategy``, CPUs and GPUs per actor from flags). Each actor runs its
batches through the same workers as a local job and commits each batch as a part in
the job's parts directory, so resuming, the key check and the final merge are the
local job's (on a cluster, ``--output`` must be on storage every node sees). Ray Data
does not keep row order; the merge restores the input's from the ids.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from typing import Any

from squeezer.batch.job import (
    BatchJob,
    BatchReport,
    RowProgress,
    job_key,
    write_report,
    writer_for,
)
from squeezer.batch.rows import InputFormat, Row, read_rows
from squeezer.batch.store import PartStore
from squeezer.errors import InvalidRequestError


class RowsActor:
    """One Ray actor: squeezer's runtime and app, built once, running batches."""

    def __init__(self, job: BatchJob, threads: int) -> None:
        import httpx
        import torch

        from squeezer.batch.job import make_worker
        from squeezer.server.app import create_app

        torch.set_num_threads(max(1, threads))
        self.job = job
        self.loop = asyncio.new_event_loop()
        app = create_app(job.settings)
        self.runtime = app.state.runtime
        self.loop.run_until_complete(self.runtime.start())
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://batch", timeout=None
        )
        self.worker = make_worker(job, self.runtime, self.client)
        self.store = PartStore(job.output)

    def __call__(self, batch: Any) -> dict[str, list[Any]]:
        rows = [_row(self.job, record) for record in batch.to_pylist()]
        outcomes = self.loop.run_until_complete(self._run(rows))
        self.store.commit([o.record(r) for r, o in zip(rows, outcomes, strict=True)])
        return {
            "id": [r.id for r in rows],
            "error": [o.error for o in outcomes],
            "tokens": [o.tokens for o in outcomes],
        }

    async def _run(self, rows: list[Row]) -> list[Any]:
        window = asyncio.Semaphore(self.job.window)

        async def one(row: Row) -> Any:
            async with window:
                return await self.worker(row)

        return list(await asyncio.gather(*(one(r) for r in rows)))


def _row(job: BatchJob, record: dict[str, Any]) -> Row:
    if job.format is InputFormat.OPENAI:
        try:
            line = json.loads(record["text"])
        except json.JSONDecodeError as e:
            line = {"_unreadable": f"not JSON: {e}"}
        return Row(str(line.get("custom_id")), -1, line)
    assert job.id_column is not None
    return Row(str(record[job.id_column]), -1, record)


def _dataset(job: BatchJob) -> Any:
    import ray.data

    path = str(job.input)
    if job.format is InputFormat.OPENAI:
        return ray.data.read_text(path)
    if job.format is InputFormat.JSONL:
        return ray.data.read_json(path, lines=True)
    if job.format is InputFormat.CSV:
        return ray.data.read_csv(path)
    return ray.data.read_parquet(path)


def run_batch_ray(
    job: BatchJob,
    *,
    actors: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    address: str | None = None,
) -> BatchReport:
    """Run (or resume) ``job`` on Ray Data; the same output and report as
    ``run_batch``. ``address``: a running cluster (None: a local Ray)."""
    import ray
    import ray.data

    if job.format is not InputFormat.OPENAI and job.id_column is None:
        raise InvalidRequestError(
            "--ray needs --id-column: Ray Data does not keep a row's position, which "
            "would be its id otherwise"
        )
    write = writer_for(job)
    # The input's order and ids, read here once: the merge restores that order, and a
    # duplicate or missing id is refused before any actor starts.
    order = {row.id: row.index for row in read_rows(job.input, job.format, job.id_column)}
    store = PartStore(job.output)
    done = store.open(job_key(job, _fingerprints(job)), force=job.force)
    report = BatchReport(rows=len(order), resumed=len(done))
    started_ray = not ray.is_initialized()
    if started_ray:
        # A local Ray gets one CPU more than the actors take: Ray Data's read tasks
        # need one, and with every CPU held by an actor the job would wait forever.
        cpus = None
        if address is None:
            cpus = max(os.cpu_count() or 1, math.ceil(actors * cpus_per_actor)) + 1
        ray.init(address=address, num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    try:
        ds = _dataset(job)
        if done:
            ds = ds.filter(lambda record: _row(job, record).id not in done)
        results = ds.map_batches(
            RowsActor,
            fn_constructor_kwargs={"job": job, "threads": int(cpus_per_actor)},
            compute=ray.data.ActorPoolStrategy(size=actors),
            batch_size=job.part_size,
            batch_format="pyarrow",
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor,
        )
        _follow(job, results, report)
    finally:
        if started_ray:
            ray.shutdown()
    report.wall_s = round(time.perf_counter() - started, 3)
    if not report.stopped_early:
        store.merge(write, order)
    write_report(job, report)
    return report


def _fingerprints(job: BatchJob) -> dict[str, str]:
    """Each model's fingerprint, from its files (the driver loads no weights)."""
    from squeezer.models import locate, read_folder
    from squeezer.models.fingerprint import fingerprint

    out = {}
    for spec in job.settings.models:
        folder = read_folder(locate(spec.path, tracking_uri=job.settings.mlflow_tracking_uri))
        out[spec.name] = fingerprint(folder).digest
    return out


def _follow(job: BatchJob, results: Any, report: BatchReport) -> None:
    """Drive the dataset, counting what the actors report."""
    with RowProgress(job, report, "rows (ray)") as progress:
        for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
            stats = batch.to_pydict()
            for row_id, error, tokens in zip(
                stats["id"], stats["error"], stats["tokens"], strict=True
            ):
                report.count(row_id, error, tokens)
            if progress.advance(len(stats["id"])):
                return


__all__ = ["RowsActor", "run_batch_ray"]

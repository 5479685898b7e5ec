"""Where a batch job's results go, so that a crash loses only the rows in flight.

Results are written as part files (``OUT.parts/part-*.jsonl``), each written to a
temporary name, flushed and fsynced, then renamed: a part either exists whole or not
at all, whatever killed the writer (a Parquet file half-written has no footer, so
nothing is ever appended to an open file). The directory's ``manifest.json`` holds
the job's key: the model fingerprint, a hash of the task's parameters and the input's
identity. A rerun with the same key skips every id a committed part holds; another
key is refused unless the job is started anew. When the job completes, the parts are
merged into the requested file (in input order, each row once) and removed.
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from squeezer.errors import ConflictError

MANIFEST = "manifest.json"


@dataclass(frozen=True, slots=True)
class JobKey:
    """What must not change between a job and its resumption."""

    model_fingerprint: str
    parameters: str
    input: str


def _atomic_write(path: Path, lines: Iterable[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for line in lines:
            f.write(line)
            f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class PartStore:
    """The committed results of one job's output."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.parts = output.with_name(output.name + ".parts")

    def open(self, key: JobKey, *, force: bool) -> set[str]:
        """Start or resume; the ids already done. A different job's parts are a
        conflict (``force`` discards them)."""
        manifest = self.parts / MANIFEST
        if manifest.is_file():
            found = JobKey(**json.loads(manifest.read_text(encoding="utf-8")))
            if found != key and not force:
                changed = [f for f in asdict(key) if getattr(found, f) != getattr(key, f)]
                raise ConflictError(
                    f"{self.parts} holds a job with another {', '.join(changed)}; "
                    "rerun with --force to discard it and start anew"
                )
            if found != key:
                shutil.rmtree(self.parts)
        self.parts.mkdir(parents=True, exist_ok=True)
        # A part that was being written, and the runs of a merge that was cut short.
        for stale in [*self.parts.glob(".*.tmp"), *self.parts.glob("run-*.jsonl")]:
            stale.unlink()
        _atomic_write(manifest, [json.dumps(asdict(key))])
        return {str(rec["id"]) for rec in self.records()}

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.jsonl"))

    def records(self) -> Iterator[dict[str, Any]]:
        for part in self._part_files():
            yield from _read(part)

    def commit(self, records: list[dict[str, Any]]) -> None:
        """One part, whole or not at all. Named uniquely, not by count, so that many
        writers (Ray Data's actors) can commit into one directory."""
        path = self.parts / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.jsonl"
        _atomic_write(path, (json.dumps(r, ensure_ascii=False) for r in records))

    def merge(self, write: Any, order: dict[str, int] | None = None) -> int:
        """Every committed record in input order (``order``: each id's position, for
        writers that did not know it), streamed through ``write(records, path)`` into
        the output, atomically; then the parts are removed. Returns the count.

        Memory holds one part at a time, then one record per run: each part is sorted
        on its own, and the sorted runs are merged k-way (in rounds of at most
        ``_FAN_IN`` open files), so a job of millions of rows merges in what one part
        takes, not in what the whole output takes."""
        runs = [self._sorted_run(part, order) for part in self._part_files()]
        round_ = 0
        while len(runs) > _FAN_IN:
            round_ += 1
            merged = []
            for start in range(0, len(runs), _FAN_IN):
                group = runs[start : start + _FAN_IN]
                path = self.parts / f"run-{round_}-{start // _FAN_IN:06d}.jsonl"
                _atomic_write(path, (json.dumps(r) for r in _merged(group)))
                merged.append(path)
            runs = merged
        count = 0

        def counted() -> Iterator[dict[str, Any]]:
            nonlocal count
            for record in _merged(runs):
                count += 1
                yield record

        tmp = self.output.with_name(f".{self.output.name}.tmp")
        write(counted(), tmp)
        os.replace(tmp, self.output)
        shutil.rmtree(self.parts)
        return count

    def _sorted_run(self, part: Path, order: dict[str, int] | None) -> Path:
        """``part`` sorted by input position (the part itself when it already is)."""
        records = list(_read(part))
        if order is not None:
            for r in records:
                r["index"] = order[str(r["id"])]
        positions = [int(r["index"]) for r in records]
        if order is None and positions == sorted(positions):
            return part
        records.sort(key=_position)
        path = part.with_name("run-0-" + part.name)
        _atomic_write(path, (json.dumps(r, ensure_ascii=False) for r in records))
        return path


#: Sorted runs merged at once (each an open file).
_FAN_IN = 128


def _position(record: dict[str, Any]) -> int:
    return int(record["index"])


def _read(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _merged(runs: list[Path]) -> Iterator[dict[str, Any]]:
    return heapq.merge(*(_read(run) for run in runs), key=_position)

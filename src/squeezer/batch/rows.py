"""The rows of a batch job: read from JSONL, CSV or Parquet, each with a stable id.

A row's id is what resuming keys on: an OpenAI batch line's ``custom_id``, the value
of ``--id-column``, or the row's index in an input file whose hash the job records
(an index means nothing once the file changes).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from squeezer.errors import InvalidRequestError


class InputFormat(str, Enum):
    JSONL = "jsonl"
    CSV = "csv"
    PARQUET = "parquet"
    #: OpenAI's batch file (``custom_id``, ``method``, ``url``, ``body`` per line), as
    #: ``vllm run-batch`` reads it.
    OPENAI = "openai"

    @classmethod
    def of(cls, path: Path) -> InputFormat:
        """The format a file's name and first line say."""
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".pq"):
            return cls.PARQUET
        if suffix == ".csv":
            return cls.CSV
        if suffix in (".jsonl", ".json", ".ndjson"):
            with path.open(encoding="utf-8") as f:
                first = next((line for line in f if line.strip()), "")
            try:
                head = json.loads(first) if first else {}
            except json.JSONDecodeError:
                head = {}
            if isinstance(head, dict) and {"custom_id", "url", "body"} <= set(head):
                return cls.OPENAI
            return cls.JSONL
        raise InvalidRequestError(
            f"{path}: cannot tell its format from '{suffix}'; give --format "
            "(jsonl, csv, parquet or openai)"
        )


@dataclass(frozen=True, slots=True)
class Row:
    """One unit of work: its id, its position in the input, and what it holds (the
    text, a pair, or an OpenAI request line)."""

    id: str
    index: int
    record: dict[str, Any]


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _records(path: Path, fmt: InputFormat) -> Iterator[dict[str, Any]]:
    if fmt in (InputFormat.JSONL, InputFormat.OPENAI):
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    record = {"_unreadable": f"line {number} is not JSON: {e}"}
                yield record if isinstance(record, dict) else {"_unreadable": "not an object"}
    elif fmt is InputFormat.CSV:
        with path.open(encoding="utf-8", newline="") as f:
            yield from csv.DictReader(f)
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InvalidRequestError(
                "Parquet needs pyarrow: pip install 'squeezer[batch]'"
            ) from None
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            yield from batch.to_pylist()


def read_rows(path: Path, fmt: InputFormat, id_column: str | None) -> Iterator[Row]:
    """Every row of the input, in order, with its id."""
    seen: set[str] = set()
    for index, record in enumerate(_records(path, fmt)):
        if fmt is InputFormat.OPENAI:
            key = record.get("custom_id")
        elif id_column is not None:
            key = record.get(id_column)
        else:
            key = index
        if key is None or str(key) == "":
            column = "custom_id" if fmt is InputFormat.OPENAI else id_column
            raise InvalidRequestError(f"{path}: row {index} has no {column}")
        row_id = str(key)
        if row_id in seen:
            raise InvalidRequestError(
                f"{path}: id {row_id!r} appears twice; ids must be unique to resume by them"
            )
        seen.add(row_id)
        yield Row(row_id, index, record)

"""``squeezer batch`` as a process: killed with SIGKILL part-way, then run again with
the same command, its output holds every row exactly once, and the rerun did only
the rows the first run had not committed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROWS = 6000


def _command(tiny_bert: Path, tmp_path: Path) -> list[str]:
    return [
        sys.executable, "-m", "squeezer", "batch", str(tmp_path / "in.jsonl"),
        "--model", f"bert={tiny_bert}", "--task", "embed", "--id-column", "key",
        "--output", str(tmp_path / "out.jsonl"), "--part-size", "200", "--no-progress",
    ]  # fmt: skip


def test_sigkill_then_rerun_gives_each_row_exactly_once(tiny_bert: Path, tmp_path: Path) -> None:
    with (tmp_path / "in.jsonl").open("w") as f:
        for i in range(ROWS):
            f.write(json.dumps({"key": f"row-{i}", "text": f"sentence {i} of the job"}) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    parts = tmp_path / "out.jsonl.parts"
    proc = subprocess.Popen(_command(tiny_bert, tmp_path), env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.jsonl"))) < 3:  # killed mid-job, parts committed
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "no part was committed in 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    committed = len(list(parts.glob("part-*.jsonl")))
    assert not (tmp_path / "out.jsonl").exists()

    done = subprocess.run(
        _command(tiny_bert, tmp_path), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    ids = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert ids == [f"row-{i}" for i in range(ROWS)]  # each once, in input order
    report = json.loads((tmp_path / "out.jsonl.report.json").read_text())
    assert report["resumed"] >= committed * 200 and report["errors"] == 0
    assert not parts.exists()

"""The golden-output gate: a version's outputs on held-out text, recorded when it was
approved (a lockfile), and how far a later load's outputs may be from them.

``squeezer pin`` writes the lockfile; ``squeezer pin --check`` and every load of a
version that has one recompute the outputs on the same inputs and judge them here,
task by task. The default tolerance is "as pinned" for an fp32 model: cosine loss at
most 1e-4, identical labels, tags and greedy prefixes (and logprobs within 5e-5). The
fingerprint and library versions recorded beside the outputs explain a drift; they do
not decide it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from squeezer.errors import ModelLoadError
from squeezer.models.fingerprint import Fingerprint
from squeezer.optimize.precision import held_out_texts
from squeezer.types import GoldenReport, GoldenTask, Task

FORMAT = "squeezer-golden/1"
#: Held-out texts per task, and generation's prompts x greedy tokens.
TEXTS = 16
NEW_TOKENS = 16
#: "As pinned": the largest loss each task passes with by default.
DEFAULT_TOLERANCE: dict[Task, float] = {
    Task.EMBED: 1e-4,  # 1 - min cosine
    Task.CLASSIFY: 0.0,  # label disagreement
    Task.ZERO_SHOT: 0.0,  # label disagreement
    Task.RERANK: 1e-3,  # largest score change, and the top-1 must not change
    Task.TOKEN_CLASSIFY: 0.0,  # tag disagreement
    Task.FILL_MASK: 0.0,  # 1 - top-1 agreement
    Task.QUESTION_ANSWERING: 0.0,  # 1 - answer agreement
    # The larger of: the share of prompts whose greedy prefix differs, and the largest
    # logprob change (nats) along the recorded path. SmolLM2 in fp32, recomputed with
    # its prompts' prefixes already cached (another computation path): 1.1e-5; the
    # tiny test Llama's fp16 copy: 1.0e-4.
    Task.GENERATE: 5e-5,
}
ZERO_SHOT_LABELS = ("science", "politics", "sports", "art")


@dataclass(slots=True)
class Lockfile:
    """What ``squeezer pin`` recorded."""

    model: str
    version: str
    fingerprint: dict[str, Any]
    versions: dict[str, str | None]
    #: Task -> its inputs and outputs (``Recorder`` shapes, plain JSON).
    outputs: dict[str, dict[str, Any]]
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    format: str = FORMAT

    def write(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                {
                    "format": self.format,
                    "model": self.model,
                    "version": self.version,
                    "created": self.created,
                    "fingerprint": self.fingerprint,
                    "versions": self.versions,
                    "outputs": self.outputs,
                },
                indent=1,
            )
            + "\n"
        )

    @classmethod
    def read(cls, path: Path) -> Lockfile:
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            return cls(
                model=str(data["model"]),
                version=str(data["version"]),
                fingerprint=dict(data["fingerprint"]),
                versions=dict(data["versions"]),
                outputs=dict(data["outputs"]),
                created=str(data.get("created", "")),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelLoadError(f"lockfile {path}: {e}") from e


# -- inputs -----------------------------------------------------------------------------


def inputs(task: Task, *, mask_token: str | None = None) -> dict[str, Any]:
    """The held-out inputs a task's outputs are recorded on (the optimizer's report
    split, never text the project wrote)."""
    texts = held_out_texts(TEXTS + 1)
    if task is Task.RERANK:
        return {"query": texts[0], "texts": texts[1:]}
    if task is Task.ZERO_SHOT:
        return {"texts": texts[:TEXTS], "candidate_labels": list(ZERO_SHOT_LABELS)}
    if task is Task.FILL_MASK:
        if mask_token is None:
            raise ModelLoadError("a fill-mask model without a mask token cannot be pinned")
        masked = [" ".join([*t.split()[:-1], mask_token]) for t in texts[:TEXTS]]
        return {"texts": masked}
    if task is Task.QUESTION_ANSWERING:
        pairs = [
            [f"What is said about {' '.join(t.split()[:3])}?", f"{t} {texts[i + 1]}"]
            for i, t in enumerate(texts[:TEXTS])
        ]
        return {"pairs": pairs}
    return {"texts": texts[:TEXTS]}


# -- judging --------------------------------------------------------------------------------


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.asarray(np.sum(a * b, axis=1).clip(-1.0, 1.0))


def _agreement(a: list[Any], b: list[Any]) -> float:
    if not a:
        return 1.0
    return sum(1 for x, y in zip(a, b, strict=False) if x == y) / max(len(a), len(b))


def compare(
    task: Task, pinned: dict[str, Any], now: dict[str, Any]
) -> tuple[float, dict[str, float]]:
    """The task's loss (what its tolerance applies to) and the measures behind it."""
    if task is Task.EMBED:
        cos = _cosines(np.asarray(pinned["vectors"]), np.asarray(now["vectors"]))
        return max(0.0, 1.0 - float(cos.min())), {
            "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean()),
        }
    if task in (Task.CLASSIFY, Task.ZERO_SHOT):
        p, n = np.asarray(pinned["scores"]), np.asarray(now["scores"])
        agree = float(np.mean(p.argmax(axis=1) == n.argmax(axis=1)))
        return 1.0 - agree, {"agreement": agree, "max_prob_change": float(np.abs(p - n).max())}
    if task is Task.RERANK:
        p, n = np.asarray(pinned["scores"]), np.asarray(now["scores"])
        change = float(np.abs(p - n).max())
        top1 = float(p.argmax() == n.argmax())
        return (change if top1 else max(change, 1.0)), {"max_score_change": change, "top1": top1}
    if task is Task.TOKEN_CLASSIFY:
        agree = float(
            np.mean([_agreement(a, b) for a, b in zip(pinned["tags"], now["tags"], strict=True)])
        )
        return 1.0 - agree, {"tag_agreement": agree}
    if task in (Task.FILL_MASK, Task.QUESTION_ANSWERING):
        key = "top" if task is Task.FILL_MASK else "answers"
        p_top = [tuple(x[:-1]) for x in pinned[key]]
        n_top = [tuple(x[:-1]) for x in now[key]]
        agree = _agreement(p_top, n_top)
        change = float(
            np.abs(np.asarray([x[-1] for x in pinned[key]]) - [x[-1] for x in now[key]]).max()
        )
        return 1.0 - agree, {"top1_agreement": agree, "max_score_change": change}
    if task is Task.GENERATE:
        differs, change = 0, 0.0
        for p_tok, n_tok, p_lp, n_lp in zip(
            pinned["tokens"], now["tokens"], pinned["logprobs"], now["logprobs"], strict=True
        ):
            same = 0
            while same < min(len(p_tok), len(n_tok)) and p_tok[same] == n_tok[same]:
                same += 1
            differs += same < len(p_tok)
            if same:
                change = max(change, float(np.abs(np.asarray(p_lp[:same]) - n_lp[:same]).max()))
        share = differs / max(1, len(pinned["tokens"]))
        return max(share, change), {"prefix_differs": share, "max_logprob_change": change}
    raise ValueError(f"no golden measure for {task.value}")


def tolerances(overrides: dict[str, float] | None) -> dict[Task, float]:
    """The default tolerances with ``--drift-tolerance TASK=LOSS`` applied."""
    out = dict(DEFAULT_TOLERANCE)
    for name, value in (overrides or {}).items():
        try:
            out[Task(name)] = float(value)
        except ValueError:
            known = ", ".join(t.value for t in Task)
            raise ValueError(
                f"--drift-tolerance {name}={value}: unknown task (tasks: {known})"
            ) from None
    return out


def judge(
    lock: Lockfile,
    lockfile: str,
    outputs: dict[str, dict[str, Any]],
    fingerprint: dict[str, Any],
    versions: dict[str, str | None],
    tolerance: dict[Task, float],
) -> GoldenReport:
    """``outputs`` (recomputed on the lockfile's inputs) against the pinned ones."""
    tasks = []
    for name, pinned in lock.outputs.items():
        task = Task(name)
        if name not in outputs:
            tasks.append(GoldenTask(name, 1.0, tolerance[task], False, {"missing": 1.0}))
            continue
        loss, figures = compare(task, pinned, outputs[name])
        tasks.append(GoldenTask(name, loss, tolerance[task], loss <= tolerance[task], figures))
    then = Fingerprint(str(lock.fingerprint.get("digest")), dict(lock.fingerprint.get("parts", {})))
    changed = tuple(
        then.differences(Fingerprint(str(fingerprint.get("digest")), fingerprint["parts"]))
    )
    libraries = {
        k: (lock.versions.get(k), versions.get(k))
        for k in sorted({*lock.versions, *versions})
        if lock.versions.get(k) != versions.get(k)
    }
    return GoldenReport(
        lockfile,
        all(t.passed for t in tasks),
        tuple(tasks),
        fingerprint_changes=changed,
        library_changes=libraries,
    )

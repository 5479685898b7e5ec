"""A loaded version's golden outputs, computed through the engine as requests are:
the same tokenizer, batching and heads. ``squeezer pin`` records them; a load of a
version that has a lockfile recomputes them on the lockfile's own inputs and has
``optimize.golden`` judge the difference."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from squeezer.backends.sampling import SamplingParams
from squeezer.config import Settings
from squeezer.engine import Engine
from squeezer.engine.generation import GenerationRequest
from squeezer.errors import ModelLoadError
from squeezer.models.fingerprint import LOCKFILE_NAME
from squeezer.optimize import golden
from squeezer.server.registry import ServedModel
from squeezer.tasks import (
    ClassifyRequest,
    EmbedRequest,
    FillMaskRequest,
    QARequest,
    RerankRequest,
    TokenClassifyRequest,
    ZeroShotRequest,
)
from squeezer.tasks.classify import scores_by_label
from squeezer.tasks.generate import GenerateRequest
from squeezer.types import EngineRequest, GoldenReport, Task

#: The keys of a task's record that are its inputs (the rest are its outputs).
_INPUT_KEYS = ("texts", "query", "candidate_labels", "pairs")


async def _run(engine: Engine, model: ServedModel, task: Task, request: Any) -> Any:
    handler = model.tasks[task]
    items = list(handler.prepare(request))
    results = await engine.submit(EngineRequest(model=model.engine_key, items=items))
    return handler.finish(request, items, results)


async def _generate(engine: Engine, model: ServedModel, prompts: list[str]) -> dict[str, Any]:
    """``golden.NEW_TOKENS`` greedy tokens per prompt, with their logprobs."""
    task = model.generator
    assert task is not None

    async def one(prompt: str) -> tuple[list[int], list[float]]:
        request = GenerateRequest(prompt=prompt, max_new_tokens=golden.NEW_TOKENS, ignore_eos=True)
        plan = task.plan(request, SamplingParams(top_logprobs=0))
        stream = engine.generate(
            model.engine_key,
            GenerationRequest(plan.prompt, plan.max_new_tokens, plan.params, ignore_eos=True),
        )
        outs = [out async for out in stream]
        return [o.token for o in outs], [round(float(o.logprob), 7) for o in outs]

    done = await asyncio.gather(*(one(p) for p in prompts))
    return {"tokens": [d[0] for d in done], "logprobs": [d[1] for d in done]}


async def _outputs(
    engine: Engine, model: ServedModel, task: Task, given: dict[str, Any]
) -> dict[str, Any]:
    texts = given.get("texts", [])
    if task is Task.EMBED:
        result = await _run(engine, model, task, EmbedRequest(inputs=texts, truncate=True))
        return {"vectors": np.asarray(result.embeddings).round(7).tolist()}
    if task is Task.CLASSIFY:
        labels = list(model.info.labels)
        rows = await _run(engine, model, task, ClassifyRequest(texts, top_k=None, truncate=True))
        return {"labels": labels, "scores": scores_by_label(rows, labels)}
    if task is Task.ZERO_SHOT:
        candidates = given["candidate_labels"]
        rows = await _run(engine, model, task, ZeroShotRequest(texts, candidates, truncate=True))
        return {
            "scores": [
                [dict(zip(r.labels, r.scores, strict=True))[c] for c in candidates] for r in rows
            ]
        }
    if task is Task.RERANK:
        request = RerankRequest(given["query"], texts, truncate=True)
        hits = (await _run(engine, model, task, request)).hits
        return {"scores": [h.score for h in sorted(hits, key=lambda h: h.index)]}
    if task is Task.TOKEN_CLASSIFY:
        rows = await _run(
            engine, model, task, TokenClassifyRequest(list(texts), aggregation_strategy="none")
        )
        return {"tags": [[[e.start, e.end, e.entity] for e in row] for row in rows]}
    if task is Task.FILL_MASK:
        rows = await _run(engine, model, task, FillMaskRequest(texts, top_k=1, truncate=True))
        return {"top": [[row[0][0].token, row[0][0].score] for row in rows]}
    if task is Task.QUESTION_ANSWERING:
        answers = []
        for question, context in given["pairs"]:
            best = (await _run(engine, model, task, QARequest(question, context)))[0]
            answers.append([best.start, best.end, best.score])
        return {"answers": answers}
    if task is Task.GENERATE:
        return await _generate(engine, model, texts)
    raise ValueError(f"no golden outputs for {task.value}")


async def record(
    engine: Engine, model: ServedModel, pinned: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Each task's inputs and outputs: on ``pinned``'s inputs when given (a check),
    else on fresh held-out text (a pin)."""
    out = {}
    for task in model.info.tasks:
        if pinned is not None and task.value in pinned:
            given = {k: v for k, v in pinned[task.value].items() if k in _INPUT_KEYS}
        else:
            mask = model.folder.special_tokens.get("mask_token")
            given = golden.inputs(task, mask_token=mask)
        out[task.value] = {**given, **await _outputs(engine, model, task, given)}
    return out


def lockfile_of(model: ServedModel, configured: str | None) -> Path | None:
    """The version's lockfile: its setting, else ``squeezer.lock.json`` in its folder."""
    if configured:
        return Path(configured)
    beside = model.folder.path / LOCKFILE_NAME
    return beside if beside.is_file() else None


async def gate(
    engine: Engine, settings: Settings, model: ServedModel, configured: str | None
) -> GoldenReport | None:
    """Check a load against its lockfile (None without one). Drift over tolerance
    refuses the load (``ModelLoadError`` with the figures) unless ``allow_drift``."""
    path = lockfile_of(model, configured)
    if path is None or not settings.golden_gate:
        return None
    lock = golden.Lockfile.read(path)
    outputs = await record(engine, model, lock.outputs)
    info = model.info
    report = golden.judge(
        lock,
        str(path),
        outputs,
        {"digest": info.content_hash, "parts": info.fingerprint},
        info.versions.as_dict(),
        golden.tolerances(settings.drift_tolerance),
    )
    if not report.passed:
        if not settings.allow_drift:
            raise ModelLoadError(f"golden-output gate ({path}): {report.summary()}")
        report = replace(report, allowed=True)
    return report

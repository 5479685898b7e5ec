"""How a loaded version joins the engine (its batch queue or generation scheduler, on
its device's thread) and the check it passes there before anything resolves to it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from squeezer.config import ModelSettings, Settings
from squeezer.engine import Engine
from squeezer.engine.generation import GenerationRequest
from squeezer.errors import ModelLoadError
from squeezer.server.lifecycle.golden_run import gate
from squeezer.server.loading import LoadedGenerator, prefill_tokens
from squeezer.server.registry import ServedModel
from squeezer.tasks import EncoderItem, EncoderRunner, TokenVectorsHead
from squeezer.tasks.generate import GenerateRequest
from squeezer.types import EngineRequest

#: One CPU forward pass costs ~4.5 ms fixed + ~0.14 ms per padded token (MiniLM, 2
#: cores; benchmarks/batch_cost.py): the fixed part is worth ~32 tokens of padding.
_CPU_OVERHEAD_TOKENS = 32.0


def _overhead_tokens(settings: Settings, device: str) -> float | None:
    if settings.batch_overhead_tokens is not None:
        return settings.batch_overhead_tokens
    return _CPU_OVERHEAD_TOKENS if device == "cpu" else None


def add_to_engine(
    engine: Engine, settings: Settings, served: ServedModel, backend: Any, spec: ModelSettings
) -> None:
    """Give ``served`` its queue (an encoder) or scheduler (a causal LM), named by its
    engine key, so that two loads of one version can run side by side."""
    s, info = settings, served.info
    if isinstance(backend, LoadedGenerator):
        generator = backend.backend
        engine.add_generator(
            served.engine_key,
            generator,
            device=info.device,
            max_batch_total_tokens=min(
                s.max_batch_total_tokens or generator.token_budget, generator.token_budget
            ),
            max_concurrent_requests=s.max_concurrent_requests,
            max_prefill_tokens=prefill_tokens(s, info.device),
        )
        return
    engine.add_model(
        served.engine_key,
        backend,
        EncoderRunner(
            int(served.folder.config.get("pad_token_id") or 0),
            token_type_ids=served.folder.token_type_ids,
        ),
        device=info.device,
        max_batch_tokens=spec.max_batch_tokens,
        max_batch_requests=spec.max_batch_requests,
        batch_overhead_tokens=_overhead_tokens(s, info.device),
    )


async def verify(
    engine: Engine, settings: Settings, model: ServedModel, lockfile: str | None = None
) -> None:
    """Checks a load passes before anything resolves to it: its chat template renders,
    a short request's outputs are finite (a generation: at least one token; with
    ``warmup`` also a full-length batch, so first requests are not slow), and its
    outputs match its lockfile's (the golden-output gate; the report goes to
    ``model.info.golden``)."""
    await _probe(engine, settings, model)
    report = await gate(engine, settings, model, lockfile)
    if report is not None:
        model.info = replace(model.info, golden=report)


def _check_chat_template(model: ServedModel) -> None:
    task = model.generator
    if task is None or not task.has_chat_template:
        return
    conversation = [
        {"role": "user", "content": "Hello there."},
        {"role": "assistant", "content": "Hello! How can I help?"},
    ]
    try:
        ids = task.prompt_ids(GenerateRequest(messages=conversation))
    except Exception as e:
        raise ModelLoadError(
            f"{model.folder.path}: the chat template (tokenizer_config.json or "
            f"chat_template.jinja) fails on a two-message conversation: {e}"
        ) from e
    if not ids:
        raise ModelLoadError(
            f"{model.folder.path}: the chat template renders a two-message conversation "
            "as no tokens"
        )


async def _probe(engine: Engine, settings: Settings, model: ServedModel) -> None:
    _check_chat_template(model)
    if model.generator is not None:
        probe = GenerationRequest(model.generator.prompt_ids(GenerateRequest("warm up")), 4)
        tokens = 0
        async for _ in engine.generate(model.engine_key, probe):
            tokens += 1
        if tokens == 0:
            raise ModelLoadError("the check generated no token")
        return
    head = TokenVectorsHead()
    batches = [["warm up"]]
    if settings.warmup:
        batches.append([" ".join(["warm"] * model.info.max_input_length)] * 4)
    for texts in batches:
        items = [EncoderItem(t, head) for t in model.tokenizer.encode(texts, truncate=True)]
        results = await engine.submit(EngineRequest(model=model.engine_key, items=items))
        if not all(np.isfinite(np.asarray(r)).all() for r in results):
            raise ModelLoadError("the check's outputs are not finite (NaN or inf)")

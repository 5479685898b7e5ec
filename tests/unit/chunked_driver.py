"""Drive a generation backend the way chunked prefill does, without the scheduler."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from squeezer.backends.base import GenerationBackend, NewSequence, PromptChunk
from squeezer.backends.sampling import SamplingParams


def drive_chunked(
    backend: GenerationBackend,
    prompts: dict[Hashable, list[int]],
    new: int,
    chunk: int,
    params: Mapping[Hashable, SamplingParams] | None = None,
) -> dict[Hashable, list[int]]:
    """``new`` tokens of every prompt (greedy unless ``params`` says otherwise), each
    joining one step after the other and fed ``chunk`` prompt tokens per step, in the
    same steps as the others' decode tokens. Tokens past ``new`` (accepted drafts) are
    dropped, as the scheduler drops them."""
    waiting = list(prompts)
    prefilling: dict[Hashable, int] = {}  # prompt tokens already in the cache
    got: dict[Hashable, list[int]] = {}
    while waiting or prefilling or any(len(v) < new for v in got.values()):
        if waiting:
            prefilling[waiting.pop(0)] = 0
        chunks = [
            PromptChunk(
                NewSequence(
                    i, prompts[i], (params or {}).get(i, SamplingParams()), len(prompts[i]) + new
                ),
                done,
                min(done + chunk, len(prompts[i])),
            )
            for i, done in prefilling.items()
        ]
        running = {i: v[-1] for i, v in got.items() if len(v) < new}
        for out in backend.step(chunks, running):
            if len(got.setdefault(out.id, [])) < new:
                got[out.id].append(out.token)
        for c in chunks:
            if c.last:
                del prefilling[c.seq.id]
            else:
                prefilling[c.seq.id] = c.end
        for i in running:
            if len(got[i]) == new:
                backend.free(i)
    return got

"""Text generation as a task: prompts and chat messages in, streamed text out.

Everything text-level lives here, on top of the engine's token-level scheduler: the
chat template (from the tokenizer, as ``transformers`` applies it), the prompt's
token ids, incremental detokenization, stop sequences (which cancel the sequence in
the engine as soon as they appear), and the finish reason the dialects report.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from squeezer.errors import InvalidRequestError
from squeezer.models import ModelFolder
from squeezer.tasks.text_stream import IncrementalDetokenizer, StopMatcher


class Finish(str, Enum):
    """Why text ended, in TGI's words (OpenAI maps ``eos_token`` and ``stop_sequence``
    to ``stop``)."""

    LENGTH = "length"
    EOS_TOKEN = "eos_token"
    STOP_SEQUENCE = "stop_sequence"

    @property
    def openai(self) -> str:
        return "length" if self is Finish.LENGTH else "stop"


@dataclass(slots=True)
class GenerateRequest:
    """A generation request, whatever dialect it arrived in."""

    prompt: str | None = None
    #: Chat messages ({"role", "content"}); the model's chat template renders them.
    messages: list[dict[str, Any]] | None = None
    max_new_tokens: int = 100
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class TextDone:
    finish: Finish
    prompt_tokens: int
    completion_tokens: int
    #: The stop sequence that ended the text, when one did.
    stop: str | None = None


class TokenEvent(Protocol):
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


class TokenStream(Protocol):
    """What the engine gives back: token events, then ``finished`` is set."""

    finished: Any

    def __aiter__(self) -> AsyncIterator[TokenEvent]: ...


class GenerateTask:
    """Pre- and post-processing of generation for one model."""

    def __init__(self, folder: ModelFolder) -> None:
        from transformers import AutoTokenizer

        self.folder = folder
        self.hf_tokenizer = AutoTokenizer.from_pretrained(folder.path, local_files_only=True)
        self.tokenizer = self.hf_tokenizer.backend_tokenizer  # the Rust tokenizer
        self.eos_ids = frozenset(self._eos_ids())

    def _eos_ids(self) -> list[int]:
        found: list[int] = []
        sources: list[Any] = [self.folder.config.get("eos_token_id")]
        gen = self.folder.path / "generation_config.json"
        if gen.is_file():
            sources.append(json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id"))
        sources.append(self.hf_tokenizer.eos_token_id)
        for value in sources:
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, int) and v not in found:
                    found.append(v)
        return found

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf_tokenizer, "chat_template", None))

    def prompt_ids(self, request: GenerateRequest) -> list[int]:
        """The prompt as token ids: the chat template's rendering, or the text as is."""
        if request.messages is not None:
            if not self.has_chat_template:
                raise InvalidRequestError(
                    f"model {self.folder.path.name!r} has no chat template; send a plain "
                    "prompt (completions) instead of messages",
                    param="messages",
                )
            try:
                text = self.hf_tokenizer.apply_chat_template(
                    request.messages, tokenize=False, add_generation_prompt=True
                )
            except Exception as e:  # jinja errors on malformed messages
                raise InvalidRequestError(f"messages: {e}", param="messages") from e
            ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False).ids
        elif request.prompt is not None:
            ids = self.tokenizer.encode(request.prompt, add_special_tokens=True).ids
        else:
            raise InvalidRequestError("a prompt or messages are required", param="prompt")
        if not ids:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        return ids

    async def text(
        self,
        stream: TokenStream,
        request: GenerateRequest,
        prompt: Sequence[int],
    ) -> AsyncIterator[TextDelta | TextDone]:
        """Text deltas of ``stream``, then one ``TextDone``. A stop sequence ends the
        text before it and stops the engine's sequence (leaving the loop cancels it)."""
        detok = IncrementalDetokenizer(self.tokenizer, prompt)
        stops = StopMatcher(request.stop)
        generated = 0
        async for event in stream:
            generated += 1
            piece = "" if event.token in self.eos_ids else detok.push(event.token)
            emitted = stops.push(piece)
            if emitted or stops.matched is None:
                yield TextDelta(emitted, event.token, event.logprob, event.top)
            if stops.matched is not None:
                yield TextDone(Finish.STOP_SEQUENCE, len(prompt), generated, stops.matched)
                return
        tail = stops.push(detok.flush())
        tail += stops.flush() if stops.matched is None else ""
        if tail:
            yield TextDelta(tail, -1, 0.0)
        if stops.matched is not None:
            yield TextDone(Finish.STOP_SEQUENCE, len(prompt), generated, stops.matched)
            return
        reason = getattr(stream.finished, "reason", None)
        finish = Finish.EOS_TOKEN if getattr(reason, "value", "") == "eos" else Finish.LENGTH
        yield TextDone(finish, len(prompt), generated)

"""Text generation as a task: prompts and chat messages in, streamed text out.

Everything text-level lives here, on top of the engine's token-level scheduler: the
chat template (from the tokenizer, as ``transformers`` applies it), the prompt's
token ids, incremental detokenization, stop sequences (which cancel the sequence in
the engine as soon as they appear), and the finish reason the dialects report.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Protocol

from squeezer.backends.base import PromptLogprob
from squeezer.backends.sampling import SamplingParams
from squeezer.errors import InputTooLongError, InvalidRequestError
from squeezer.models import ModelFolder
from squeezer.tasks.text_stream import IncrementalDetokenizer, StopMatcher
from squeezer.tasks.tool_calls import ToolFormat


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
    #: A prompt already tokenized (OpenAI completions accept token ids).
    prompt_tokens: list[int] | None = None
    #: Chat messages ({"role", "content"}); the model's chat template renders them.
    messages: list[dict[str, Any]] | None = None
    #: Tools the chat template presents to the model (OpenAI's function definitions).
    tools: list[dict[str, Any]] | None = None
    #: None: up to the server's max_total_tokens.
    max_new_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    #: Keep only the prompt's last ``truncate`` tokens (TGI's ``truncate``).
    truncate: int | None = None
    #: Token ids that end the text when generated (vLLM's ``stop_token_ids``).
    stop_token_ids: list[int] = field(default_factory=list)
    #: vLLM's detokenization options: special tokens left out of the text, and (when
    #: they are not) whether two in a row may be separated by the decoder's space.
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    #: The stop string, or the stop or EOS token's text, ends the text too.
    include_stop_str_in_output: bool = False

    @property
    def text_size(self) -> int:
        """Characters to tokenize (prompt and message contents, tokens counted as
        ids): what decides whether preparing it may hold the event loop."""
        size = len(self.prompt or "") + len(self.prompt_tokens or ())
        for message in self.messages or ():
            content = message.get("content")
            if isinstance(content, str):
                size += len(content)
            elif isinstance(content, list):  # OpenAI content parts
                size += sum(len(str(part.get("text", ""))) for part in content)
        return size


@dataclass(frozen=True, slots=True)
class TextDelta:
    """The text one token completes; ``token`` -1 is text left over at the end."""

    text: str
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    #: The prompt's logprobs (None for its first token), with the first delta of a
    #: request that asked for them.
    prompt: tuple[PromptLogprob | None, ...] | None = None
    #: The text's last delta: a ``TextDone`` follows at once (its text includes what
    #: was held back to the end).
    final: bool = False


@dataclass(frozen=True, slots=True)
class TextDone:
    finish: Finish
    prompt_tokens: int
    completion_tokens: int
    #: The stop sequence or stop token id that ended the text, when one did.
    stop: str | int | None = None


class TokenEvent(Protocol):
    @property
    def token(self) -> int: ...
    @property
    def logprob(self) -> float: ...
    @property
    def top(self) -> tuple[tuple[int, float], ...]: ...
    @property
    def prompt(self) -> tuple[PromptLogprob | None, ...] | None: ...
    @property
    def last(self) -> bool: ...


class TokenStream(Protocol):
    """What the engine gives back: token events, then ``finished`` is set."""

    finished: Any

    def __aiter__(self) -> AsyncIterator[TokenEvent]: ...

    def cancel(self) -> None: ...


@dataclass(frozen=True, slots=True)
class GenerationLimits:
    """Per-request limits (TGI's flags of the same names)."""

    max_input_tokens: int = 2047
    max_total_tokens: int = 2048
    max_stop_sequences: int = 4
    #: Characters per stop sequence: the text stream holds back up to the longest one
    #: and scans it at every token, so a megabyte of stop string costs that per token.
    max_stop_length: int = 256


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated request, ready for the engine."""

    prompt: list[int]
    max_new_tokens: int
    params: SamplingParams


@dataclass(slots=True)
class Generation:
    """A started generation: its prompt and the text events as they come."""

    prompt: list[int]
    params: SamplingParams
    events: AsyncGenerator[TextDelta | TextDone, None]

    @property
    def seed(self) -> int | None:
        """The seed sampling used (None for greedy), so a client can reproduce it."""
        return None if self.params.greedy else self.params.seed


class GenerateTask:
    """Pre- and post-processing of generation for one model."""

    def __init__(self, folder: ModelFolder, limits: GenerationLimits | None = None) -> None:
        from transformers import AutoTokenizer

        self.folder = folder
        self.limits = limits or GenerationLimits()
        self.hf_tokenizer = AutoTokenizer.from_pretrained(folder.path, local_files_only=True)
        self.tokenizer = self.hf_tokenizer.backend_tokenizer  # the Rust tokenizer
        self.eos_ids = frozenset(folder.eos_token_ids(self.hf_tokenizer.eos_token_id))
        self._special_ids = frozenset(self.hf_tokenizer.all_special_ids)
        self._added: dict[int, str] | None = None

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf_tokenizer, "chat_template", None))

    @property
    def tool_format(self) -> ToolFormat:
        """How this model writes tool calls, read off its chat template."""
        return ToolFormat.detect(getattr(self.hf_tokenizer, "chat_template", None))

    def prompt_ids(self, request: GenerateRequest) -> list[int]:
        """The prompt as token ids: the chat template's rendering, or the text as is."""
        if request.messages is not None:
            if not self.has_chat_template:
                raise InvalidRequestError(
                    f"model {self.folder.path.name!r} has no chat template; send a plain "
                    "prompt (completions) instead of messages",
                    param="messages",
                )
            if request.tools and "tools" not in str(self.hf_tokenizer.chat_template):
                raise InvalidRequestError(
                    f"model {self.folder.path.name!r}: its chat template does not take "
                    "tools, so the model would never see them",
                    param="tools",
                )
            tools: Any = request.tools or None
            try:
                text = self.hf_tokenizer.apply_chat_template(
                    request.messages,
                    tools=tools,
                    tokenize=False,
                    add_generation_prompt=True,
                )
            except Exception as e:  # jinja errors on malformed messages
                raise InvalidRequestError(f"messages: {e}", param="messages") from e
            ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False).ids
        elif request.prompt is not None:
            ids = self.tokenizer.encode(request.prompt, add_special_tokens=True).ids
        elif request.prompt_tokens is not None:
            vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
            if any(not 0 <= i < vocab for i in request.prompt_tokens):
                raise InvalidRequestError(
                    f"prompt token ids must be in [0, {vocab})", param="prompt"
                )
            ids = list(request.prompt_tokens)
        else:
            raise InvalidRequestError("a prompt or messages are required", param="prompt")
        if request.truncate is not None:
            ids = ids[-request.truncate :]
        if not ids:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        return ids

    def plan(self, request: GenerateRequest, params: SamplingParams) -> Plan:
        """Tokenize and check a request against the limits: every refusal is a 422 that
        says which limit, before anything is queued."""
        lim = self.limits
        if len(request.stop) > lim.max_stop_sequences:
            raise InvalidRequestError(
                f"stop: at most {lim.max_stop_sequences} stop sequences, got {len(request.stop)}",
                param="stop",
            )
        longest = max(request.stop, key=len, default="")
        if len(longest) > lim.max_stop_length:
            raise InvalidRequestError(
                f"stop: each stop sequence holds at most {lim.max_stop_length} characters, "
                f"got one of {len(longest)}",
                param="stop",
            )
        if request.max_new_tokens is not None and request.max_new_tokens < 1:
            raise InvalidRequestError("max_new_tokens must be >= 1", param="max_new_tokens")
        if request.truncate is not None and request.truncate < 1:
            raise InvalidRequestError("truncate must be >= 1", param="truncate")
        try:
            params.validate()
        except ValueError as e:
            raise InvalidRequestError(str(e)) from None
        prompt = self.prompt_ids(request)
        if len(prompt) > lim.max_input_tokens:
            raise InputTooLongError(
                f"the prompt has {len(prompt)} tokens; at most {lim.max_input_tokens} are "
                "allowed (--max-input-tokens); shorten it or set truncate",
                param="inputs",
            )
        room = lim.max_total_tokens - len(prompt)
        new = room if request.max_new_tokens is None else request.max_new_tokens
        if new > room:
            raise InputTooLongError(
                f"prompt tokens + max_new_tokens must be <= {lim.max_total_tokens} "
                f"(--max-total-tokens); given {len(prompt)} prompt tokens and "
                f"{new} max_new_tokens",
                param="max_new_tokens",
            )
        if params.min_new_tokens > new:
            raise InvalidRequestError(
                f"min_tokens ({params.min_new_tokens}) must be <= max_new_tokens ({new})",
                param="min_tokens",
            )
        if any(t < 0 for t in request.stop_token_ids):
            raise InvalidRequestError("stop_token_ids must be >= 0", param="stop_token_ids")
        if params.min_new_tokens and not params.eos_ids:  # stop tokens wait for it too
            ends = self.eos_ids | set(request.stop_token_ids)
            params = replace(params, eos_ids=tuple(sorted(ends)))
        return Plan(prompt, new, params)

    def decode(self, ids: Sequence[int]) -> str:
        text: str = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return text

    def token_text(self, token: int) -> str:
        """One token's own text (for logprobs), as decoding it alone gives it."""
        text: str = self.tokenizer.decode([token], skip_special_tokens=False)
        return text

    def is_special(self, token: int) -> bool:
        return token in self._special_ids

    def is_special_text(self, text: str) -> bool:
        """Whether ``text`` is one special token (skipped when special tokens are)."""
        token = self.tokenizer.token_to_id(text)
        return token is not None and token in self._special_ids

    def _added_tokens(self) -> dict[int, str]:
        if self._added is None:
            decoder = self.tokenizer.get_added_tokens_decoder()
            self._added = {token: added.content for token, added in decoder.items()}
        return self._added

    async def text(
        self,
        stream: TokenStream,
        request: GenerateRequest,
        prompt: Sequence[int],
    ) -> AsyncGenerator[TextDelta | TextDone, None]:
        """Text deltas of ``stream``, then one ``TextDone``. A stop sequence ends the
        text before it; closing this generator early (a client gone) or a stop sequence
        cancels the engine's sequence, freeing its slot at the next step."""
        try:
            async for item in self._text(stream, request, prompt):
                yield item
        finally:
            if stream.finished is None:
                stream.cancel()

    async def _text(
        self,
        stream: TokenStream,
        request: GenerateRequest,
        prompt: Sequence[int],
    ) -> AsyncGenerator[TextDelta | TextDone, None]:
        detok = IncrementalDetokenizer(
            self.tokenizer,
            prompt,
            skip_special=request.skip_special_tokens,
            added=None
            if request.skip_special_tokens or request.spaces_between_special_tokens
            else self._added_tokens(),
        )
        stops = StopMatcher(request.stop, include=request.include_stop_str_in_output)
        # The token that ends a text is not part of it (vLLM): EOS (unless ignored: then
        # it is text like any other), or a stop token id.
        enders = set(request.stop_token_ids) | (set() if request.ignore_eos else self.eos_ids)
        generated = 0
        flushed = False
        async for event in stream:
            generated += 1
            hidden = event.token in enders and not request.include_stop_str_in_output
            piece = "" if hidden else detok.push(event.token)
            text = stops.push(piece)
            if event.last and stops.matched is None:
                # The engine ended the text with this token: what is held back (an
                # incomplete character, a possible stop's prefix) is its text too.
                text += stops.push(detok.flush())
                text += stops.flush() if stops.matched is None else ""
                flushed = True
            # One delta per token (its text may be "" while a character or a possible
            # stop sequence is incomplete): dialects report every token.
            final = event.last or stops.matched is not None
            yield TextDelta(text, event.token, event.logprob, event.top, event.prompt, final)
            if stops.matched is not None:
                yield TextDone(Finish.STOP_SEQUENCE, len(prompt), generated, stops.matched)
                return
        tail = "" if flushed else stops.push(detok.flush())
        tail += stops.flush() if stops.matched is None and not flushed else ""
        if tail:
            yield TextDelta(tail, -1, 0.0)
        if stops.matched is not None:
            yield TextDone(Finish.STOP_SEQUENCE, len(prompt), generated, stops.matched)
            return
        reason = getattr(getattr(stream.finished, "reason", None), "value", "")
        if reason == "stop_token":
            token = stream.finished.stop_token
            yield TextDone(Finish.STOP_SEQUENCE, len(prompt), generated, token)
            return
        finish = Finish.EOS_TOKEN if reason == "eos" else Finish.LENGTH
        yield TextDone(finish, len(prompt), generated)

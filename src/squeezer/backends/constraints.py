"""Structured outputs: a grammar per sequence, enforced as a token mask in the sampler.

The grammar engine is llguidance (the measurement that picked it over outlines-core
is in docs/benchmarks.md, "Grammar engines"): JSON schemas, regexes, choice lists and
Lark or GBNF grammars all compile to its grammar format, and a matcher per sequence
says, at each step, which tokens may come next. Only constrained rows of a batch are
masked, in place; a sequence without a constraint shares only the step's wait for its
neighbours' masks (about 0.3 ms per step for one, docs/benchmarks.md).

A ``Constraint`` is plain text (it crosses the engine socket with its request); the
``GrammarBook`` of a model turns it into matchers against the model's tokenizer,
caching each compiled grammar, so that a hundred requests with one schema compile it
once.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from squeezer.models import ModelFolder

if TYPE_CHECKING:
    import llguidance

log = logging.getLogger(__name__)

#: Compiled grammars kept per model (each is a template matcher, copied per sequence).
_CACHED_GRAMMARS = 256

ConstraintKind = Literal["json_schema", "regex", "choice", "grammar"]

#: JSON may be compact or pretty-printed, but between two of its tokens there is at
#: most one space, or one line break and an indentation of up to 20 spaces or tabs:
#: with unbounded whitespace (the engines' default) a model can spin in it until
#: max_tokens, a known failure of constrained JSON. A schema's own ``x-guidance``
#: options override this.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": True,
    "whitespace_pattern": r"(\x20|\x0A[\x20\x09]{0,20})?",
}


@dataclass(frozen=True, slots=True)
class Constraint:
    """What a sequence's text must match.

    ``json_schema``: a JSON schema, as JSON text (``{"type": "object"}`` is any
    object); ``regex``: a regular expression (Rust ``regex`` syntax); ``choice``: a
    JSON list of the allowed strings; ``grammar``: a Lark grammar (llguidance's
    dialect) or a GBNF/EBNF one (llama.cpp's, vLLM's ``grammar``)."""

    kind: ConstraintKind
    value: str

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str) -> Constraint:
        return cls("json_schema", schema if isinstance(schema, str) else json.dumps(schema))

    @classmethod
    def choice(cls, options: Sequence[str]) -> Constraint:
        return cls("choice", json.dumps(list(options)))

    def grammar(self) -> str:
        """llguidance's grammar text; ValueError when this cannot be one."""
        from llguidance import LLMatcher, grammar_from

        try:
            if self.kind == "json_schema":
                options: Any = JSON_OPTIONS
                text = LLMatcher.grammar_from_json_schema(self.value, defaults=options)
            else:
                text = grammar_from(self.kind, self.value)
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{self.kind}: {e}") from None
        error = LLMatcher.validate_grammar(text)
        if error:
            raise ValueError(f"{self.kind}: {error}")
        return text

    def check(self) -> None:
        """Refuse what cannot compile, before anything is queued (ValueError)."""
        if self.kind == "choice":
            options = json.loads(self.value)
            if not options or not all(isinstance(o, str) and o for o in options):
                raise ValueError("choice: a non-empty list of non-empty strings is required")
        self.grammar()


class GrammarBook:
    """A model's tokenizer as llguidance sees it, and its compiled grammars.

    Built lazily (the tokenizer conversion takes about a second for a 49k vocabulary)
    on the device's thread, the first time a constrained sequence arrives."""

    def __init__(self, folder: ModelFolder, vocab_size: int) -> None:
        """``vocab_size``: the model's logits' width (its embedding rows), which may
        be larger than the tokenizer's vocabulary."""
        self.folder = folder
        self.vocab_size = vocab_size
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._templates: OrderedDict[Constraint, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Build the tokenizer now (the loader calls this on a thread of its own, so
        that the first constrained request does not stall its device's steps). A
        tokenizer llguidance cannot take fails each constrained request instead."""
        try:
            with self._lock:
                self._llg_tokenizer()
        except Exception as e:  # logged here; the requests that need it say why
            log.warning("structured outputs unavailable for %s: %s", self.folder.path, e)

    def _llg_tokenizer(self) -> llguidance.LLTokenizer:
        if self._tokenizer is None:
            import llguidance
            import llguidance.hf
            from transformers import AutoTokenizer

            hf: Any = AutoTokenizer.from_pretrained(self.folder.path, local_files_only=True)
            # A grammar that is complete allows exactly the tokens that end a text.
            eos = self.folder.eos_token_ids(hf.eos_token_id)
            self._tokenizer = llguidance.hf.from_tokenizer(
                hf, n_vocab=self.vocab_size, eos_token=eos or None
            )
        return self._tokenizer

    def matcher(self, constraint: Constraint) -> llguidance.LLMatcher:
        """A fresh matcher for one sequence (ValueError if the grammar fails)."""
        with self._lock:
            template = self._templates.get(constraint)
            if template is None:
                import llguidance

                template = llguidance.LLMatcher(
                    self._llg_tokenizer(), constraint.grammar(), log_level=0
                )
                if template.is_error():
                    raise ValueError(f"{constraint.kind}: {template.get_error()}")
                self._templates[constraint] = template
                if len(self._templates) > _CACHED_GRAMMARS:
                    self._templates.popitem(last=False)
            else:
                self._templates.move_to_end(constraint)
            return template.deep_copy()

    def allowed(self, matchers: Sequence[llguidance.LLMatcher]) -> torch.Tensor:
        """(N, vocab) bool: the tokens each matcher allows next, computed as one bit
        per token. One call per matcher: on two cores a loop beat llguidance's
        parallel executor at 32 sequences (docs/benchmarks.md, "Grammar engines")."""
        import llguidance.torch

        bits = llguidance.torch.allocate_token_bitmask(len(matchers), self.vocab_size)
        for row, matcher in enumerate(matchers):
            llguidance.torch.fill_next_token_bitmask(matcher, bits, row)
        unpacked = np.unpackbits(bits.numpy().view(np.uint8), axis=1, bitorder="little")
        return torch.from_numpy(unpacked[:, : self.vocab_size].astype(bool))


class ConstrainedSequences:
    """The matchers of a backend's sequences that have a constraint, by sequence id.

    A matcher is made at the sequence's first sampled token and advanced by each token
    sampled for it; ``book`` is the model's (None: structured outputs unavailable)."""

    def __init__(self) -> None:
        self.book: GrammarBook | None = None
        self._matchers: dict[Hashable, llguidance.LLMatcher] = {}

    def mask(
        self, seqs: Sequence[Hashable], constraints: Sequence[Constraint | None], device: Any
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(rows, allowed tokens) of the constrained rows of a step, None when none."""
        rows = [i for i, c in enumerate(constraints) if c is not None]
        if not rows:
            return None
        if self.book is None:
            raise ValueError("structured outputs are not available for this model's backend")
        matchers = []
        for i in rows:
            matcher = self._matchers.get(seqs[i])
            if matcher is None:
                constraint = constraints[i]
                assert constraint is not None
                matcher = self._matchers[seqs[i]] = self.book.matcher(constraint)
            matchers.append(matcher)
        allowed = self.book.allowed(matchers)
        index = torch.tensor(rows, dtype=torch.long, device=device)
        return index, allowed.to(device)

    def advance(self, rows: Sequence[int], seqs: Sequence[Hashable], tokens: Sequence[int]) -> None:
        """The tokens sampled for the constrained ``rows`` of a step."""
        for row in rows:
            self._matchers[seqs[row]].consume_token(tokens[row])

    def release(self, seq: Hashable) -> None:
        self._matchers.pop(seq, None)

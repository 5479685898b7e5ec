"""Types shared across layers, and the small protocols through which they meet.

The engine batches work it does not understand: it sees only a token count per item,
and a runner that collates items into named arrays and splits the backend's named
arrays back into one result per item. Tasks provide runners; the engine never imports
a task and a task never imports the engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from squeezer.versions import LibraryVersions, library_versions

#: Arrays by name (``input_ids``, ``attention_mask``, ``last_hidden_state``, ...):
#: the only thing that crosses the engine/backend boundary.
NamedArrays = Mapping[str, npt.NDArray[Any]]


class Task(str, Enum):
    """What a request means; a served model declares the tasks it can do."""

    EMBED = "embed"
    CLASSIFY = "classify"
    TOKEN_CLASSIFY = "token-classify"
    FILL_MASK = "fill-mask"
    RERANK = "rerank"
    QUESTION_ANSWERING = "question-answering"
    ZERO_SHOT = "zero-shot"
    GENERATE = "generate"


class TruncationDirection(str, Enum):
    RIGHT = "right"
    LEFT = "left"


@runtime_checkable
class WorkItem(Protocol):
    """One unit the batcher schedules: typically one tokenized input."""

    @property
    def num_tokens(self) -> int: ...


ItemT = TypeVar("ItemT", bound=WorkItem)
ItemT_contra = TypeVar("ItemT_contra", bound=WorkItem, contravariant=True)
ResultT = TypeVar("ResultT")


class BatchRunner(Protocol[ItemT_contra, ResultT]):
    """How a task turns a batch of its items into backend inputs and back.

    Both methods run on the compute thread, next to the forward pass, so they must be
    cheap and must not touch the event loop.
    """

    def outputs(self, items: Sequence[ItemT_contra]) -> tuple[str, ...]:
        """The backend outputs these items need (the backend computes only those)."""
        ...

    def collate(self, items: Sequence[ItemT_contra]) -> NamedArrays: ...

    def split(self, outputs: NamedArrays, items: Sequence[ItemT_contra]) -> list[ResultT]: ...


@dataclass(slots=True)
class TokenizedInput:
    """One input after tokenization: what the embedding task hands to the engine."""

    ids: npt.NDArray[np.int64]
    type_ids: npt.NDArray[np.int64] | None = None
    #: (start, end) character offsets per token, kept only when a task needs them.
    offsets: list[tuple[int, int]] | None = None
    truncated: bool = False
    #: Which input of a pair each token came from (None for special tokens); kept
    #: with the offsets.
    sequence_ids: list[int | None] | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.ids.shape[0])


@dataclass(slots=True)
class EngineRequest:
    """Plain, serializable work for one model: what ``Engine.submit`` takes.

    ``deadline`` is an absolute time on the engine's clock (``time.monotonic`` unless a
    test injects another); work still queued when it passes is answered with
    ``DeadlineExceededError`` and never computed.
    """

    model: str
    items: list[Any]
    deadline: float | None = None
    request_id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BatchTiming:
    """One forward pass that held items of a request: wall-clock nanoseconds (what
    trace spans are stamped in, and comparable across the engine's and an API
    process's clocks), its size and padded tokens."""

    start_ns: int
    end_ns: int
    size: int
    padded_tokens: int
    #: The backend's forward inside it (collate and split are the rest).
    forward_start_ns: int = 0
    forward_end_ns: int = 0


@dataclass(frozen=True, slots=True)
class WorkTiming:
    """Where one request's time in the engine went, for its access-log line and its
    trace: waiting in its model's queue, then the forward passes its items were in."""

    #: From admission to the start of its first batch.
    queued_s: float = 0.0
    #: The forward passes that held its items, each counted once.
    batches: tuple[BatchTiming, ...] = ()

    @property
    def compute_s(self) -> float:
        return sum(b.end_ns - b.start_ns for b in self.batches) / 1e9


@dataclass(frozen=True, slots=True)
class Answer:
    """What ``Engine.run`` returns: the results in item order, and their timing."""

    results: list[Any]
    timing: WorkTiming


@dataclass(frozen=True, slots=True)
class PrecisionReport:
    """A reduced-precision model against its own fp32 weights, measured at load on
    held-out text, so that serving in fp16 or bf16 is never a silent accuracy change."""

    dtype: str
    #: The task whose output was compared: pooled embeddings or classifier logits.
    task: str
    texts: int
    min_cosine: float
    mean_cosine: float
    #: Embeddings: nearest neighbour unchanged; classifiers: top-1 label unchanged.
    agreement: float
    #: Classifiers only: largest change of any softmax probability.
    max_prob_diff: float
    seconds: float
    reference: str = "float32"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class GoldenTask:
    """One task's outputs against its lockfile."""

    task: str
    loss: float
    tolerance: float
    passed: bool
    #: The measures behind the loss (min cosine, agreement, largest change, ...).
    figures: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GoldenReport:
    """A version's outputs against the lockfile it was pinned with."""

    lockfile: str
    passed: bool
    tasks: tuple[GoldenTask, ...]
    #: Fingerprint parts that differ from the pinned ones (empty: the same bytes).
    fingerprint_changes: tuple[str, ...] = ()
    #: Library versions then and now, where they differ: name -> (pinned, now).
    library_changes: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    #: The drift was over tolerance and ``--allow-drift`` let the version serve.
    allowed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line an operator reads: each task's loss against its tolerance, and
        what changed."""
        parts = [
            f"{t.task} loss {t.loss:.3g} (tolerance {t.tolerance:g}, "
            + ", ".join(f"{k} {v:.4g}" for k, v in t.figures.items())
            + ")"
            + ("" if t.passed else " DRIFT")
            for t in self.tasks
        ]
        if self.fingerprint_changes:
            parts.append("fingerprint differs in " + ", ".join(self.fingerprint_changes))
        if self.library_changes:
            parts.append(
                "libraries: "
                + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in self.library_changes.items())
            )
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the server says about a served model (``/info``, ``/v1/models``)."""

    name: str
    path: str
    tasks: tuple[Task, ...]
    backend: str
    device: str
    dtype: str
    content_hash: str
    max_input_length: int
    hidden_size: int
    model_type: str
    pooling: str | None = None
    architectures: tuple[str, ...] = ()
    revision: str | None = None
    #: A classifier's output names in logit order (``id2label``); empty otherwise.
    labels: tuple[str, ...] = ()
    #: Generation models: prompt + new tokens per request.
    max_total_tokens: int | None = None
    #: fp16/bf16 models: how far their outputs are from fp32 (None: fp32, or a
    #: runtime whose precision its optimizer artifact already measured).
    precision: PrecisionReport | None = None
    #: The library versions that shape this model's outputs, as the process that runs
    #: it sees them (``versions`` wherever a model is described).
    versions: LibraryVersions = field(default_factory=library_versions)
    #: This version's label among the name's versions (a repository folder, an MLflow
    #: version, a commit, or the operator's label); ``content_hash`` is what it holds.
    version: str = "1"
    #: Which load of this version (a reload loads it again beside the first).
    load: int = 0
    #: Its weight files' size on disk: what residency limits count.
    weight_bytes: int = 0
    #: ``content_hash``'s parts (weights, config, tokenizer, special tokens, chat
    #: template, runtime artifact), each a sha256: where two versions differ.
    fingerprint: dict[str, str] = field(default_factory=dict)
    #: The golden-output gate's last check of this load (``optimize.golden``), or
    #: None when the version has no lockfile.
    golden: GoldenReport | None = None

    @property
    def engine_key(self) -> str:
        """The engine's queue for this load: ``name:version``, ``#load`` after it."""
        return self.key if self.load == 0 else f"{self.key}#{self.load}"

    @property
    def key(self) -> str:
        """``name:version``: the engine's queue, the access log's and traces' model.
        Unambiguous, since names and versions may not contain ``:``."""
        return f"{self.name}:{self.version}"

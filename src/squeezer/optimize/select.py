"""Pick the fastest candidate inside the accuracy budget, and say why the others lost.

The gate keeps a margin: on the selection split a candidate must stay within
``margin`` x the budget, so that a winner that only just passed on the text it was
chosen on does not fail on the report split. The fp32 torch reference always passes
(its loss is zero by definition); when it is the only one that does, the choice is a
fallback and the search says so (and exits with ``EXIT_FALLBACK``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from squeezer.optimize.accuracy import Accuracy
from squeezer.optimize.candidate import BuildInfo, Candidate
from squeezer.optimize.speed import Speed

#: ``squeezer optimize`` exit status when no optimized candidate met the budget.
EXIT_FALLBACK = 3
DEFAULT_MARGIN = 0.8
REFERENCE = "torch-float32"


class Objective(str, Enum):
    """What "fastest" means: sentences/s in batches of 32 (a loaded server), or the
    latency of one short sentence alone (an interactive client)."""

    THROUGHPUT = "throughput"
    LATENCY = "latency"


class Status(str, Enum):
    MEASURED = "measured"
    SKIPPED = "skipped"
    #: Built, then stopped by the speed probe: clearly slower than one that passed.
    STOPPED = "stopped early"
    FAILED = "failed"
    #: Not run here: its runtime is not installed or its files are not there (the
    #: generation search lists these as candidates, with the reason).
    UNAVAILABLE = "unavailable"


@dataclass(slots=True)
class CandidateResult:
    candidate: Candidate
    status: Status
    reason: str = ""
    build: BuildInfo | None = None
    build_s: float = 0.0
    selection: Accuracy | None = None
    report: Accuracy | None = None
    speed: Speed | None = None
    folder: Path | None = None
    verdict: str = ""

    @property
    def name(self) -> str:
        return self.candidate.name


class _Loss(Protocol):
    @property
    def loss(self) -> float: ...


class _Pace(Protocol):
    @property
    def throughput(self) -> float: ...

    @property
    def single_p50_ms(self) -> float: ...


class Result(Protocol):
    """What choosing reads of a result: encoder (``CandidateResult``) and generation
    results alike, whatever their accuracy and speed figures hold besides."""

    verdict: str

    @property
    def name(self) -> str: ...

    @property
    def status(self) -> Status: ...

    @property
    def reason(self) -> str: ...

    @property
    def selection(self) -> _Loss | None: ...

    @property
    def speed(self) -> _Pace | None: ...


R = TypeVar("R", bound=Result)


@dataclass(frozen=True, slots=True)
class Choice(Generic[R]):
    winner: R
    #: False when nothing but the fp32 reference met the budget.
    within_budget: bool
    verdicts: dict[str, str] = field(default_factory=dict)


def passes(result: Result, max_loss: float, margin: float = DEFAULT_MARGIN) -> bool:
    if result.status is not Status.MEASURED or result.selection is None:
        return False
    return result.name == REFERENCE or result.selection.loss <= margin * max_loss


def score(result: Result, objective: Objective) -> float:
    """Higher is better."""
    assert result.speed is not None
    if objective is Objective.LATENCY:
        return -result.speed.single_p50_ms
    return result.speed.throughput


def describe(result: Result, objective: Objective) -> str:
    assert result.speed is not None
    if objective is Objective.LATENCY:
        return f"{result.speed.single_p50_ms:.2f} ms"
    return f"{result.speed.throughput:.1f}/s"


def choose(
    results: list[R],
    max_loss: float,
    margin: float = DEFAULT_MARGIN,
    objective: Objective = Objective.THROUGHPUT,
) -> Choice[R]:
    """The fastest passing candidate by ``objective``; each result gets a verdict."""
    passing = [r for r in results if passes(r, max_loss, margin) and r.speed is not None]
    if not passing:
        raise ValueError(f"no measured candidate; the reference {REFERENCE} must be among them")
    winner = max(passing, key=lambda r: score(r, objective))
    best = describe(winner, objective)
    for r in results:
        if r is winner:
            r.verdict = f"chosen: fastest ({objective.value}) within the budget"
        elif r.status is not Status.MEASURED:
            r.verdict = f"{r.status.value}: {r.reason}"
        elif r not in passing and r.selection is not None:
            r.verdict = (
                f"over budget: loss {r.selection.loss:.4g} > {margin:g} x {max_loss:g} "
                "on the selection split"
            )
        elif r.speed is not None:
            r.verdict = f"slower: {describe(r, objective)} vs {best}"
    within = any(r.name != REFERENCE for r in passing)
    return Choice(winner, within, {r.name: r.verdict for r in results})

"""``squeezer optimize``: build every candidate, gate on accuracy, keep the fastest.

The fp32 torch outputs on the three text splits are the reference. Each candidate is
built into its own folder (holding the source's tokenizer, config and pooling files,
so it is servable as is), measured for accuracy on the selection split and for speed,
and scored on the report split for the record. The winner's folder becomes the
artifact, with ``squeezer.json`` and a report beside it.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from squeezer import __version__
from squeezer.backends import Backend, load_backend
from squeezer.backends.device import compute_threads, gpu_name
from squeezer.errors import ModelLoadError
from squeezer.models import ModelFolder, locate, read_folder
from squeezer.models.manifest import MANIFEST_FILE, Manifest, SourceModel, current_hardware
from squeezer.optimize.accuracy import GATED_TASKS, FloatArray, Probe, compare
from squeezer.optimize.candidate import BuildContext, Candidate, runtime_version
from squeezer.optimize.catalog import all_candidates, build_module
from squeezer.optimize.corpus import Splits, load_texts, split_texts
from squeezer.optimize.select import (
    DEFAULT_MARGIN,
    REFERENCE,
    CandidateResult,
    Choice,
    Objective,
    Status,
    choose,
    describe,
    passes,
    score,
)
from squeezer.optimize.speed import measure
from squeezer.types import Task

log = logging.getLogger(__name__)

#: Weight files a runtime rebuilds from; everything else in a model folder is copied
#: into each candidate (tokenizer, config, sentence-transformers modules).
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.onnx")
_WORK, _CACHE = ".candidates", ".cache"
#: The speed probe: seconds of timing, and the share of the best passing candidate's
#: speed below which a candidate stops (the probe is short, so it is given slack).
_PROBE_S = 1.0
_PROBE_KEEP = 0.85


@dataclass(frozen=True, slots=True)
class OptimizeSettings:
    model: str
    out: Path
    task: Task | None = None
    #: Embeddings: 1 - min cosine; classifiers: 1 - top-1 agreement.
    max_loss: float = 0.01
    margin: float = DEFAULT_MARGIN
    objective: Objective = Objective.THROUGHPUT
    texts: Path | None = None
    per_split: int = 256
    seed: int = 0
    #: Only candidates whose name starts with one of these (all when empty).
    only: tuple[str, ...] = ()
    #: Seconds of timing per candidate and shape.
    speed_budget_s: float = 4.0
    #: Seconds for the whole search (0: no limit): candidates not built by then are
    #: skipped, and the report says so.
    time_budget_s: float = 0.0
    keep_candidates: bool = False
    #: The search runs inside a server that goes on serving (``serve --optimize``):
    #: runtimes that change torch for the whole process are not tried.
    in_server: bool = False
    #: Where candidates run (resolved: ``cpu`` or ``cuda:N``); fp32 torch on it is the
    #: reference.
    device: str = "cpu"


@dataclass(slots=True)
class OptimizeResult:
    settings: OptimizeSettings
    folder: ModelFolder
    task: Task
    splits: Splits
    results: list[CandidateResult]
    choice: Choice
    manifest: Manifest
    unavailable: dict[str, str] = field(default_factory=dict)


def _support_ignore(_dir: str, names: list[str]) -> set[str]:
    import fnmatch

    return {n for n in names if any(fnmatch.fnmatch(n, p) for p in (*_WEIGHT_PATTERNS, ".git*"))}


def artifact_manifest(
    folder: ModelFolder,
    task: Task,
    candidate: Candidate,
    options: dict[str, Any],
    accuracy: dict[str, float],
    speed: dict[str, float],
    settings: Any,
    within_budget: bool,
    build: dict[str, Any],
) -> Manifest:
    """The winner's ``squeezer.json``, for the encoder and the generation search alike
    (``settings``: either search's, for its budget, objective and device)."""
    device = settings.device
    return Manifest(
        squeezer_version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        task=task.value,
        source=SourceModel(
            path=str(folder.path),
            content_hash=folder.content_hash(),
            model_type=folder.model_type,
            architectures=folder.architectures,
        ),
        runtime=candidate.runtime,
        runtime_version=runtime_version(candidate.runtime),
        precision=candidate.precision,
        variant=candidate.variant,
        candidate=candidate.name,
        runtime_options=options,
        accuracy=accuracy,
        speed=speed,
        max_loss=settings.max_loss,
        objective=settings.objective.value,
        within_budget=within_budget,
        hardware=current_hardware(compute_threads(), gpu_name(device)),
        requires=candidate.needs if device == "cpu" else (),
        build=build,
    )


def prepare_out(out: Path) -> None:
    """``out`` must be new, empty, or an earlier artifact (which is replaced)."""
    if out.exists():
        if not out.is_dir():
            raise ModelLoadError(f"--out {out} exists and is not a folder")
        if any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
            raise ModelLoadError(
                f"--out {out} is not empty and holds no {MANIFEST_FILE}: refusing to overwrite"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _task_for(folder: ModelFolder, asked: Task | None) -> Task:
    possible = folder.possible_tasks()
    task = asked or next((t for t in possible if t in GATED_TASKS), None)
    if task is None or task not in possible:
        raise ModelLoadError(
            f"{folder.path}: cannot optimize for {asked.value if asked else 'any task'}; "
            f"the model does {', '.join(t.value for t in possible) or 'nothing squeezer serves'}"
        )
    if task not in GATED_TASKS:
        raise ModelLoadError(
            f"the accuracy gate measures {', '.join(t.value for t in GATED_TASKS)}; "
            f"{task.value} is not gated yet"
        )
    return task


@contextmanager
def _loaded(
    runtime: str, path: Path, device: str, options: dict[str, Any] | None = None
) -> Iterator[Backend]:
    backend = load_backend(runtime, path, device=device, dtype="float32", options=options)
    try:
        yield backend
    finally:
        backend.close()


class Search:
    """One optimization run; ``progress(name, step)`` is told what is happening."""

    def __init__(
        self, settings: OptimizeSettings, progress: Callable[[str, str], None] | None = None
    ) -> None:
        self.s = settings
        self.progress = progress or (lambda _name, _step: None)
        self.folder = read_folder(locate(settings.model))
        self.task = _task_for(self.folder, settings.task)
        texts = load_texts(settings.texts)
        self.splits = split_texts(texts, settings.per_split, settings.seed)
        self.probes = {
            name: Probe(self.folder, self.task, getattr(self.splits, name))
            for name in ("calibration", "selection", "report")
        }
        self.reference: dict[str, FloatArray] = {}
        self._started = time.monotonic()
        #: The fastest candidate that passed the gate so far, and the runtimes that
        #: have a wholly measured candidate (the speed probe's yardsticks).
        self._best: CandidateResult | None = None
        self._runtimes_measured: set[str] = set()

    def _reference_outputs(self) -> None:
        with _loaded("torch", self.folder.path, self.s.device) as backend:
            for name, probe in self.probes.items():
                self.reference[name] = probe.run(backend)

    def _calibration_loss(self, c: Candidate) -> Callable[[Path], float]:
        def loss(path: Path) -> float:
            with _loaded(c.runtime, path, self.s.device, c.options) as backend:
                out = self.probes["calibration"].run(backend)
            return compare(self.task, self.reference["calibration"], out).loss

        return loss

    def _skip_reason(self, c: Candidate) -> str | None:
        if self.task not in c.tasks:
            return f"{c.name} does not serve {self.task.value}"
        reason: str | None = build_module(c.runtime).supports(self.folder)
        return reason

    def _run_one(self, c: Candidate, work: Path, cache: Path) -> CandidateResult:
        reason = self._skip_reason(c)
        if reason is None and c.name != REFERENCE and self._out_of_time():
            reason = f"the search's time budget ({self.s.time_budget_s:g} s) was spent"
        if reason is not None:
            return CandidateResult(c, Status.SKIPPED, reason)
        out = work / c.name
        shutil.copytree(self.folder.path, out, ignore=_support_ignore)
        ctx = BuildContext(
            self.folder,
            out,
            self.splits.calibration,
            cache,
            self._calibration_loss(c),
        )
        try:
            self.progress(c.name, "build")
            t0 = time.perf_counter()
            assert c.build is not None
            info = c.build(ctx)
            build_s = time.perf_counter() - t0
            result = CandidateResult(c, Status.MEASURED, build=info, build_s=build_s, folder=out)
            with _loaded(c.runtime, out, self.s.device, c.options) as backend:
                stop = self._probe(result, backend)
                if stop is not None:
                    result.status, result.reason = Status.STOPPED, stop
                    return result
                self.progress(c.name, "accuracy")
                for split in ("selection", "report"):
                    acc = compare(self.task, self.reference[split], self.probes[split].run(backend))
                    setattr(result, split, acc)
                self.progress(c.name, "speed")
                result.speed = measure(
                    backend,
                    self.probes["selection"],
                    self.splits.selection,
                    budget_s=self.s.speed_budget_s,
                )
            self._measured(result)
            return result
        except Exception as e:  # a broken candidate fails alone, whatever it raised
            log.warning("candidate %s failed: %s", c.name, e)
            return CandidateResult(c, Status.FAILED, f"{type(e).__name__}: {e}")

    def _out_of_time(self) -> bool:
        budget = self.s.time_budget_s
        return budget > 0 and time.monotonic() - self._started > budget

    def _probe(self, result: CandidateResult, backend: Backend) -> str | None:
        """Why a candidate stops before its accuracy and full timing, or None.

        A short speed probe ranks it against the fastest candidate that already passed
        the gate: one clearly slower cannot win, so its accuracy (the expensive part
        for a slow runtime) is not worth measuring. The first candidate of each runtime
        is always measured whole, so that every framework has a row in the report."""
        c = result.candidate
        best = self._best
        if c.name == REFERENCE or best is None or c.runtime not in self._runtimes_measured:
            return None
        self.progress(c.name, "speed probe")
        probe_s = min(_PROBE_S, self.s.speed_budget_s / 4)
        result.speed = measure(
            backend, self.probes["selection"], self.splits.selection, budget_s=probe_s
        )
        if score(result, self.s.objective) >= _PROBE_KEEP * score(best, self.s.objective):
            return None
        return (
            f"slower at the speed probe: {describe(result, self.s.objective)} against "
            f"{best.name}'s {describe(best, self.s.objective)}"
        )

    def _measured(self, result: CandidateResult) -> None:
        self._runtimes_measured.add(result.candidate.runtime)
        if not passes(result, self.s.max_loss, self.s.margin):
            return
        if self._best is None or score(result, self.s.objective) > score(
            self._best, self.s.objective
        ):
            self._best = result

    def candidates(self) -> tuple[list[Candidate], dict[str, str]]:
        return all_candidates(self.s.only, self.s.device, in_server=self.s.in_server)

    def run(self) -> OptimizeResult:
        source, out = self.folder.path.resolve(), self.s.out.resolve()
        if out == source or out in source.parents or source in out.parents:
            raise ModelLoadError(
                f"--out {self.s.out} overlaps the model folder it optimizes ({source}): "
                "choose a folder outside it"
            )
        prepare_out(self.s.out)
        self._started = time.monotonic()
        work, cache = self.s.out / _WORK, self.s.out / _CACHE
        work.mkdir()
        cache.mkdir()
        self.progress("reference", "fp32 outputs")
        self._reference_outputs()
        found, missing = self.candidates()
        results = []
        for c in found:
            results.append(self._run_one(c, work, cache))
            self.progress(c.name, "done")
        choice = choose(results, self.s.max_loss, self.s.margin, self.s.objective)
        manifest = self._publish(choice)
        if not self.s.keep_candidates:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
        return OptimizeResult(
            self.s, self.folder, self.task, self.splits, results, choice, manifest, missing
        )

    def _publish(self, choice: Choice) -> Manifest:
        """Move the winner's files into ``out`` and write its manifest."""
        winner = choice.winner
        assert winner.folder is not None and winner.report is not None
        assert winner.speed is not None
        for f in winner.folder.iterdir():
            target = self.s.out / f.name
            shutil.copytree(f, target) if f.is_dir() else shutil.copyfile(f, target)
        manifest = artifact_manifest(
            self.folder,
            self.task,
            winner.candidate,
            dict(winner.candidate.options),
            winner.report.as_dict(),
            winner.speed.as_dict(),
            self.s,
            choice.within_budget,
            dict(winner.build.details) if winner.build else {},
        )
        manifest.write(self.s.out)
        return manifest

"""``squeezer optimize`` on a causal LM: every decode path, gated on KL to fp32, fastest kept.

The encoder search's shape, over generation: fp32 torch is the reference; each
candidate (``generation_candidates``) is loaded as serving would load it, scored on the
selection split's prompts (the gate: mean KL(fp32 || candidate) within ``margin`` x
``max_loss``) and on the report split's (the figures recorded), then timed at one
stream and at ``max_num_seqs`` streams; ``select.choose`` keeps the fastest passing one
by the objective. The calibration split is unused: no candidate is calibrated (int8
here is weight-only, data-free).

Prompts are the corpus' sentences as a user's chat turn when the model has a chat
template (what an instruct model is served for), else as plain text, tokenized as the
generate task tokenizes them.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from squeezer.errors import ModelLoadError
from squeezer.models import ModelFolder, locate, read_folder
from squeezer.models.gguf import GGUF_SUFFIX
from squeezer.models.manifest import Manifest
from squeezer.optimize.candidate import Candidate
from squeezer.optimize.corpus import Splits, load_texts, split_texts
from squeezer.optimize.generation_candidates import (
    LLAMACPP,
    REFERENCE_CANDIDATE,
    find_model_gguf,
    generation_candidates,
    open_candidate,
)
from squeezer.optimize.generation_gate import GenerationAccuracy, compare_generation
from squeezer.optimize.generation_probe import SteppedBackend, greedy, teacher_forced
from squeezer.optimize.generation_speed import GenerationSpeed, measure_generation
from squeezer.optimize.search import artifact_manifest, prepare_out
from squeezer.optimize.select import DEFAULT_MARGIN, Choice, Objective, Status, choose
from squeezer.types import Task

log = logging.getLogger(__name__)

#: Decode steps the speed measure may take per admission, beyond the gate's tokens.
_SPEED_ROOM = 64
#: Weights an artifact of a llama.cpp candidate leaves out (it runs the GGUF).
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", GGUF_SUFFIX)
_SCRATCH = ("squeezer.json", "report.md", "report.png", "results.json", ".converted")


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    model: str
    out: Path
    #: The gate's budget: mean KL(fp32 || candidate), nats per token.
    max_loss: float = 0.01
    margin: float = DEFAULT_MARGIN
    objective: Objective = Objective.THROUGHPUT
    texts: Path | None = None
    #: Prompts in each split.
    per_split: int = 16
    #: Greedy tokens per prompt that the gate compares.
    new_tokens: int = 32
    #: Streams of the throughput figure (and the backends' KV slots).
    max_num_seqs: int = 32
    seed: int = 0
    only: tuple[str, ...] = ()
    #: Seconds of decode timing per candidate (half at one stream, half at many).
    speed_budget_s: float = 4.0
    #: Seconds for the whole search (0: no limit); candidates not loaded by then are
    #: skipped, and the report says so.
    time_budget_s: float = 0.0
    #: The GGUF of the llama.cpp candidate (None: the one the folder came from).
    gguf: Path | None = None
    device: str = "cpu"


@dataclass(slots=True)
class GenerationCandidateResult:
    candidate: Candidate
    status: Status
    reason: str = ""
    load_s: float = 0.0
    selection: GenerationAccuracy | None = None
    report: GenerationAccuracy | None = None
    speed: GenerationSpeed | None = None
    verdict: str = ""

    @property
    def name(self) -> str:
        return self.candidate.name


@dataclass(slots=True)
class GenerationOptimizeResult:
    settings: GenerationSettings
    folder: ModelFolder
    splits: Splits
    results: list[GenerationCandidateResult]
    choice: Choice[GenerationCandidateResult]
    manifest: Manifest
    gguf: Path | None = None
    prompt_tokens: dict[str, float] = field(default_factory=dict)

    @property
    def task(self) -> Task:
        return Task.GENERATE


def is_causal_lm(folder: ModelFolder) -> bool:
    return Task.GENERATE in folder.detect_tasks()


def _prompt_ids(folder: ModelFolder, texts: Sequence[str], limit: int) -> list[list[int]]:
    """The texts as prompts the way the generate task tokenizes them; those longer than
    ``limit`` tokens are left out (they would not leave room for the continuation)."""
    from squeezer.tasks.generate import GenerateRequest, GenerateTask

    task = GenerateTask(folder)
    out = []
    for text in texts:
        if task.has_chat_template:
            request = GenerateRequest(messages=[{"role": "user", "content": text}])
        else:
            request = GenerateRequest(prompt=text)
        ids = task.prompt_ids(request)
        if len(ids) <= limit:
            out.append(ids)
    return out


@dataclass(frozen=True, slots=True)
class _Reference:
    tokens: list[list[int]]
    logits: list[torch.Tensor]


def _close(backend: SteppedBackend | None) -> None:
    close = getattr(backend, "close", None)
    if callable(close):
        close()
    gc.collect()


class GenerationSearch:
    """One generation search; ``progress(name, step)`` is told what is happening."""

    def __init__(
        self, settings: GenerationSettings, progress: Callable[[str, str], None] | None = None
    ) -> None:
        self.s = settings
        self.progress = progress or (lambda _name, _step: None)
        if settings.new_tokens < 1 or settings.max_num_seqs < 1 or settings.per_split < 1:
            raise ValueError("--new-tokens, --max-num-seqs and --per-split must be >= 1")
        self.folder = read_folder(locate(settings.model))
        if not is_causal_lm(self.folder):
            raise ModelLoadError(
                f"{self.folder.path}: not a causal LM (architectures "
                f"{list(self.folder.architectures)}); the generation search needs *ForCausalLM"
            )
        self.gguf = find_model_gguf(self.folder, settings.gguf)
        self.splits = split_texts(load_texts(settings.texts), settings.per_split, settings.seed)
        positions = int(self.folder.config.get("max_position_embeddings") or 2048)
        room = settings.new_tokens + _SPEED_ROOM
        self.prompts = {
            split: _prompt_ids(self.folder, getattr(self.splits, split), positions - room - 1)
            for split in ("selection", "report")
        }
        if not all(self.prompts.values()):
            raise ValueError(
                f"no prompt of the text splits leaves {room} tokens of the model's "
                f"{positions} positions: give shorter texts (--texts)"
            )
        longest = max(len(p) for ps in self.prompts.values() for p in ps)
        self.max_len = min(positions, longest + room + 1)
        self.reference: dict[str, _Reference] = {}
        self._started = time.monotonic()

    def candidates(self) -> tuple[list[Candidate], dict[str, str]]:
        return generation_candidates(self.folder, self.s.only, gguf=self.gguf)

    def _open(self, c: Candidate) -> SteppedBackend:
        return open_candidate(
            c,
            self.folder.path,
            gguf=self.gguf,
            max_slots=self.s.max_num_seqs,
            max_len=self.max_len,
            device=self.s.device,
        )

    def _scores(self, backend: SteppedBackend, split: str) -> GenerationAccuracy:
        prompts, ref = self.prompts[split], self.reference[split]
        tokens = greedy(backend, prompts, self.s.new_tokens)
        logits = teacher_forced(backend, prompts, ref.tokens)
        return compare_generation(ref.logits, logits, ref.tokens, tokens)

    def _measure(
        self, c: Candidate, backend: SteppedBackend, result: GenerationCandidateResult
    ) -> None:
        self.progress(c.name, "accuracy")
        result.selection = self._scores(backend, "selection")
        result.report = self._scores(backend, "report")
        self.progress(c.name, "speed")
        result.speed = measure_generation(
            backend,
            self.prompts["selection"],
            streams=self.s.max_num_seqs,
            budget_s=self.s.speed_budget_s,
        )

    def _run_one(self, c: Candidate, backend: SteppedBackend | None) -> GenerationCandidateResult:
        """Measure ``c`` (on ``backend`` when already loaded: the reference)."""
        if backend is None and self._out_of_time():
            reason = f"the search's time budget ({self.s.time_budget_s:g} s) was spent"
            return GenerationCandidateResult(c, Status.SKIPPED, reason)
        result = GenerationCandidateResult(c, Status.MEASURED)
        owned = backend is None
        try:
            if backend is None:
                self.progress(c.name, "load")
                t0 = time.perf_counter()
                backend = self._open(c)
                result.load_s = time.perf_counter() - t0
            self._measure(c, backend, result)
            return result
        except Exception as e:  # a broken candidate fails alone, whatever it raised
            log.warning("candidate %s failed: %s", c.name, e)
            return GenerationCandidateResult(c, Status.FAILED, f"{type(e).__name__}: {e}")
        finally:
            if owned:
                _close(backend)

    def _out_of_time(self) -> bool:
        budget = self.s.time_budget_s
        return budget > 0 and time.monotonic() - self._started > budget

    def _reference_run(self) -> GenerationCandidateResult:
        """fp32's greedy continuations and its logits along them, then fp32 measured as
        any candidate (its KL to itself is 0: a check that the two paths agree)."""
        self.progress(REFERENCE_CANDIDATE.name, "fp32 reference")
        t0 = time.perf_counter()
        backend = self._open(REFERENCE_CANDIDATE)
        load_s = time.perf_counter() - t0
        try:
            for split, prompts in self.prompts.items():
                tokens = greedy(backend, prompts, self.s.new_tokens)
                self.reference[split] = _Reference(tokens, teacher_forced(backend, prompts, tokens))
            result = self._run_one(REFERENCE_CANDIDATE, backend)
        finally:
            _close(backend)
        result.load_s = load_s
        return result

    def run(self) -> GenerationOptimizeResult:
        source, out = self.folder.path.resolve(), self.s.out.resolve()
        if out == source or out in source.parents or source in out.parents:
            raise ModelLoadError(
                f"--out {self.s.out} overlaps the model folder it optimizes ({source}): "
                "choose a folder outside it"
            )
        prepare_out(self.s.out)
        self._started = time.monotonic()
        found, missing = self.candidates()
        results = [self._reference_run()]
        self.progress(REFERENCE_CANDIDATE.name, "done")
        if results[0].status is not Status.MEASURED:
            raise ModelLoadError(f"the fp32 reference failed: {results[0].reason}")
        for c in found:
            if c is REFERENCE_CANDIDATE:
                continue
            results.append(self._run_one(c, None))
            self.progress(c.name, "done")
        for name, why in missing.items():
            runtime, _, precision = name.partition("-")
            placeholder = Candidate(runtime, precision, tasks=frozenset({Task.GENERATE}))
            results.append(GenerationCandidateResult(placeholder, Status.UNAVAILABLE, why))
        choice = choose(results, self.s.max_loss, self.s.margin, self.s.objective)
        manifest = self._publish(choice)
        lengths = [len(p) for ps in self.prompts.values() for p in ps]
        return GenerationOptimizeResult(
            self.s,
            self.folder,
            self.splits,
            results,
            choice,
            manifest,
            self.gguf,
            {
                "selection": float(len(self.prompts["selection"])),
                "report": float(len(self.prompts["report"])),
                "mean": sum(lengths) / len(lengths),
                "max": float(max(lengths)),
            },
        )

    def _publish(self, choice: Choice[GenerationCandidateResult]) -> Manifest:
        """The source's files (weights linked where the file system allows), the GGUF for
        llama.cpp, and the manifest that says how to load them."""
        winner = choice.winner
        c = winner.candidate
        assert winner.report is not None and winner.speed is not None
        llama = c.runtime == LLAMACPP
        skip = _SCRATCH + (_WEIGHTS if llama else (GGUF_SUFFIX,))
        for f in sorted(self.folder.path.iterdir()):
            if f.is_file() and not f.name.endswith(skip):
                _link_or_copy(f, self.s.out / f.name)
        options = dict(c.options)
        if llama:
            assert self.gguf is not None
            _link_or_copy(self.gguf, self.s.out / self.gguf.name)
            options["gguf"] = self.gguf.name
        manifest = artifact_manifest(
            self.folder,
            Task.GENERATE,
            c,
            options,
            winner.report.as_dict(),
            winner.speed.as_dict(),
            self.s,
            choice.within_budget,
            {
                "loss": "mean KL(fp32 || candidate), teacher-forced on fp32's greedy path",
                "new_tokens": self.s.new_tokens,
                "max_num_seqs": self.s.max_num_seqs,
                "gguf": str(self.gguf) if self.gguf else None,
            },
        )
        manifest.write(self.s.out)
        return manifest


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (weights are hundreds of MB and never written in place), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)

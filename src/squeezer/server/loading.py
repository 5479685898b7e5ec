"""Loading a configured model: locating its files, choosing its runtime, device and
precision, checking it (artifact hardware, fp16 precision, the generation contract),
and describing it (``ModelInfo``, ``ServedModel``).

Split from the request façade (``runtime.py``): loading is the model lifecycle's
question, answered once per model, and later issues (versions, swaps, the golden
gate) grow it without touching how requests run.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squeezer.backends import Backend, load_backend
from squeezer.backends.base import GenerationBackend
from squeezer.backends.constraints import GrammarBook
from squeezer.backends.device import (
    cap_gpu_memory,
    compute_threads,
    gpu_name,
    resolve_device,
    resolve_dtype,
)
from squeezer.backends.llamacpp_generation import LlamaCppGenerationBackend
from squeezer.backends.paged_generation import PagedTorchGenerationBackend
from squeezer.backends.speculation import SpeculationConfig
from squeezer.backends.torch_generation import TorchGenerationBackend
from squeezer.config import ModelSettings, Settings
from squeezer.errors import ModelLoadError
from squeezer.models import ModelFolder, locate, read_folder
from squeezer.models.fingerprint import check_consistency, fingerprint
from squeezer.models.gguf import gguf_precision, source_gguf
from squeezer.models.manifest import Manifest, current_hardware, read_manifest
from squeezer.optimize.cache import optimized_artifact
from squeezer.optimize.generation_candidates import recipe_of
from squeezer.optimize.precision import WARN_BELOW, check_precision, probe_task
from squeezer.server.registry import ServedModel
from squeezer.tasks import TextTokenizer, build_tasks
from squeezer.tasks.classify import label_names
from squeezer.tasks.generate import GenerateTask, GenerationLimits
from squeezer.types import ModelInfo, PrecisionReport, Task
from squeezer.versions import library_versions

log = logging.getLogger("squeezer")


def _check_hardware(name: str, manifest: Manifest, device: str, allow_slow: bool) -> None:
    """An artifact tuned on other hardware still runs, but may not be the best choice;
    one whose kernels need CPU instructions missing here is refused unless allowed."""
    here = current_hardware(compute_threads(), gpu_name(device))
    unmet = here.unmet(manifest.requires) if device == "cpu" else []
    if unmet:
        needs = "; ".join(str(n) for n in unmet)
        message = (
            f"model {name}: artifact {manifest.candidate} relies on CPU instructions this "
            f"machine ({here.cpu}) lacks: {needs}. It would run emulated, slower than fp32"
        )
        if not allow_slow:
            raise ModelLoadError(
                f"{message}. Run `squeezer optimize` on this machine, or serve it anyway "
                "with --allow-slow-artifact"
            )
        log.warning("%s (served: --allow-slow-artifact)", message)
    differences = manifest.hardware.differences(here)
    if differences:
        log.warning(
            "model %s: artifact %s was tuned on %s; this machine differs (%s): "
            "run `squeezer optimize` here for the best choice",
            name,
            manifest.candidate,
            manifest.hardware.cpu,
            "; ".join(differences),
        )


def _model_info(
    name: str,
    folder: ModelFolder,
    tasks: tuple[Task, ...],
    backend: str,
    device: str,
    dtype: str,
    max_input_length: int,
    **extra: Any,
) -> ModelInfo:
    fp = fingerprint(folder)
    return ModelInfo(
        name=name,
        path=str(folder.path),
        tasks=tasks,
        backend=backend,
        device=device,
        dtype=dtype,
        content_hash=fp.digest,
        fingerprint=fp.parts,
        weight_bytes=folder.weight_bytes(),
        max_input_length=max_input_length,
        hidden_size=folder.hidden_size,
        model_type=folder.model_type,
        architectures=folder.architectures,
        versions=library_versions(backend),
        **extra,
    )


def describe(info: ModelInfo, settings: Settings) -> ServedModel:
    """What serves a loaded model's requests besides its weights: folder, tokenizer and
    task objects, rebuilt from its ``ModelInfo``. API processes (``--api-workers``)
    build these from the infos the engine process sends, without loading weights."""
    tasks = info.tasks
    if Task.GENERATE in tasks:
        folder = read_folder(Path(info.path))
        limits = GenerationLimits(
            max_input_tokens=info.max_input_length,
            max_total_tokens=info.max_total_tokens or settings.max_total_tokens,
            max_stop_sequences=settings.max_stop_sequences,
        )
        tokenizer = TextTokenizer(folder.tokenizer_file, limits.max_input_tokens)
        return ServedModel(info, folder, tokenizer, {}, GenerateTask(folder, limits))
    folder = read_folder(
        Path(info.path), pooling=info.pooling, max_input_length=info.max_input_length
    )
    tokenizer = TextTokenizer(
        folder.tokenizer_file, folder.max_input_length, max_windows=settings.max_input_windows
    )
    return ServedModel(info, folder, tokenizer, build_tasks(info.name, tasks, folder, tokenizer))


def _kv_cache(settings: Settings, device: str) -> str:
    if settings.kv_cache != "auto":
        return settings.kv_cache
    return "paged" if device.startswith("cuda") else "slots"


def speculation(settings: Settings) -> SpeculationConfig | None:
    """``--speculative-config`` as the backends take it (checked again here: a TOML
    file's value has not passed the flag's check)."""
    if settings.speculative_config is None:
        return None
    try:
        return SpeculationConfig.parse(settings.speculative_config)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"speculative_config: {e}") from e


def prefill_tokens(settings: Settings, device: str) -> int:
    """Prompt tokens per step beside decoding: small on CPU, where a step's cost grows
    with its tokens and decoding streams would stall; a GPU takes thousands at once."""
    return settings.max_batch_prefill_tokens or (256 if device == "cpu" else 4096)


@dataclass(frozen=True, slots=True)
class LoadedGenerator:
    """A causal LM's backend: it goes to the generation scheduler, not a batch queue."""

    backend: GenerationBackend


class ModelLoader:
    """Turns one ``ModelSettings`` into a loaded backend and its ``ModelInfo``, under the
    server's settings; runs in a worker thread at start-up."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def load(
        self, spec: ModelSettings, load: int = 0
    ) -> tuple[ModelInfo, Backend | LoadedGenerator]:
        """``load``: which load of this version it is (reloads come beside the first)."""
        info, backend = self._load(spec)
        return dataclasses.replace(info, version=spec.version or "1", load=load), backend

    def _load(self, spec: ModelSettings) -> tuple[ModelInfo, Backend | LoadedGenerator]:
        s = self.settings
        path = locate(spec.path, tracking_uri=s.mlflow_tracking_uri)
        device = resolve_device(spec.device or s.device)
        manifest = read_manifest(path)
        if manifest is None and s.optimize:
            path = optimized_artifact(path, s.optimize_max_loss, s.optimize_cache, device)
            manifest = read_manifest(path)
        if manifest is not None:
            _check_hardware(spec.name, manifest, device, s.allow_slow_artifact)
        folder = read_folder(path, pooling=spec.pooling, max_input_length=spec.max_input_length)
        # Before the weights load: a tokenizer that does not fit is refused at once.
        check_consistency(folder, max_length=folder.max_input_length)
        detected = folder.detect_tasks()
        tasks = tuple(Task(t) for t in spec.tasks) if spec.tasks else detected
        if not tasks:
            raise ModelLoadError(
                f"model {spec.name!r} ({folder.model_type}, {list(folder.architectures)}): "
                "no task detected; name its tasks in the model's settings"
            )
        dtype = resolve_dtype(spec.dtype or s.dtype, device)
        cap_gpu_memory(device, s.gpu_memory_fraction)
        if Task.GENERATE in tasks:
            return self._load_generator(spec, folder, tasks, device, dtype, manifest)
        # An artifact names its runtime; only a per-model setting overrides it.
        backend_name = spec.backend or (manifest.runtime if manifest else s.backend)
        options = manifest.runtime_options if manifest and manifest.runtime == backend_name else {}
        dtype = str(options.get("dtype", dtype))  # an artifact measured at its precision
        backend = load_backend(backend_name, path, device=device, dtype=dtype, options=options)
        precision = None
        if backend_name == "torch" and dtype != "float32" and s.precision_check:
            precision = self._check_precision(
                spec.name, folder, tasks, backend, path, device, dtype
            )
        info = _model_info(
            spec.name,
            folder,
            tasks,
            backend_name,
            device,
            dtype,
            folder.max_input_length,
            pooling=folder.pooling,
            labels=tuple(label_names(folder.config)) if folder.config.get("id2label") else (),
            precision=precision,
        )
        return info, backend

    @staticmethod
    def _check_precision(
        name: str,
        folder: ModelFolder,
        tasks: tuple[Task, ...],
        backend: Backend,
        path: Path,
        device: str,
        dtype: str,
    ) -> PrecisionReport | None:
        """fp16/bf16 against the same weights in fp32, logged; never silent."""
        task = probe_task(tasks)
        if task is None:
            log.warning(
                "model %s in %s: no precision measure for its tasks (%s); its accuracy "
                "against fp32 is not measured",
                name,
                dtype,
                "/".join(t.value for t in tasks),
            )
            return None
        report = check_precision(
            folder,
            task,
            dtype,
            backend,
            lambda: load_backend("torch", path, device=device, dtype="float32"),
        )
        level = logging.INFO if report.min_cosine >= WARN_BELOW else logging.WARNING
        log.log(
            level,
            "model %s in %s vs float32 on %d held-out texts (%s): min cosine %.5f, mean "
            "%.5f, agreement %.3f (%.1f s)",
            name,
            report.dtype,
            report.texts,
            report.task,
            report.min_cosine,
            report.mean_cosine,
            report.agreement,
            report.seconds,
        )
        return report

    def _load_generator(
        self,
        spec: ModelSettings,
        folder: ModelFolder,
        tasks: tuple[Task, ...],
        device: str,
        dtype: str,
        manifest: Manifest | None = None,
    ) -> tuple[ModelInfo, LoadedGenerator]:
        s = self.settings
        if tasks != (Task.GENERATE,):
            raise ModelLoadError(
                f"model {spec.name!r}: a causal LM serves only 'generate', not "
                f"{[t.value for t in tasks if t is not Task.GENERATE]}"
            )
        # A generation artifact is one of the fixed candidates that --dtype/--quantize
        # name: its recipe applies unless this model's own settings say otherwise.
        recipe = recipe_of(manifest, folder.path) if manifest is not None else None
        quantize = spec.quantize or (recipe.quantize if recipe else s.quantize)
        if recipe is not None and recipe.dtype and not spec.dtype:
            dtype = recipe.dtype
        backend: GenerationBackend
        if quantize == "gguf":
            gguf = recipe.gguf if recipe and recipe.gguf else source_gguf(folder.path)
            if gguf is None:
                raise ModelLoadError(
                    f"model {spec.name!r}: --quantize gguf runs llama.cpp on the GGUF file a "
                    f"model was converted from, and {folder.path} was not (serve a .gguf "
                    "file or a package that carries one, or use --quantize int8)"
                )
            if device != "cpu":
                raise ModelLoadError(f"model {spec.name!r}: --quantize gguf runs on cpu only")
            backend = LlamaCppGenerationBackend(
                gguf,
                max_slots=s.max_num_seqs,
                max_len=s.max_total_tokens,
                speculation=speculation(s),
            )
            dtype = gguf_precision(gguf)
        else:
            make: Callable[..., TorchGenerationBackend] = TorchGenerationBackend
            if _kv_cache(s, device) == "paged":
                make = functools.partial(
                    PagedTorchGenerationBackend,
                    block_size=s.kv_block_size,
                    memory_fraction=s.gpu_memory_fraction,
                    prefill_tokens=prefill_tokens(s, device),
                )
            backend = make(
                folder.path,
                device=device,
                dtype=dtype,
                max_slots=s.max_num_seqs,
                max_len=s.max_total_tokens,
                quantize=quantize,
                speculation=speculation(s),
            )
            if quantize is not None:
                dtype = f"{dtype}+{quantize} weights"
        if manifest is not None and recipe is not None and quantize == recipe.quantize:
            log.info(
                "model %s: artifact %s, measured against fp32 on held-out prompts: %s",
                spec.name,
                recipe.candidate,
                ", ".join(f"{k} {v:.4g}" for k, v in manifest.accuracy.items()),
            )
        elif quantize is not None:
            log.warning(
                "model %s: quantized generation (%s) is lossy; its measured accuracy cost "
                "is in docs/benchmarks.md",
                spec.name,
                quantize,
            )
        book = GrammarBook(folder, backend.vocab_size)
        backend.table.grammars.book = book
        # Resolved here, before the warm thread imports llguidance.hf: transformers'
        # lazy module, first imported by two threads at once (a llama.cpp model has not
        # imported it to load), failed the tokenizer's import in ``describe``.
        from transformers import AutoTokenizer  # noqa: F401

        threading.Thread(target=book.warm, name=f"grammars-{spec.name}", daemon=True).start()
        limits = GenerationLimits(
            max_input_tokens=min(s.input_token_limit, backend.max_len - 1),
            max_total_tokens=backend.max_len,
            max_stop_sequences=s.max_stop_sequences,
        )
        info = _model_info(
            spec.name,
            folder,
            tasks,
            backend.name,
            device,
            dtype,
            limits.max_input_tokens,
            max_total_tokens=limits.max_total_tokens,
        )
        return info, LoadedGenerator(backend)

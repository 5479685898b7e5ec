"""JAX/XLA on CPU: the HF PyTorch encoder traced by torchax and compiled by XLA.

There is no exported file: the artifact holds the source's safetensors, and torchax
(``torchax.extract_jax``) turns the ``nn.Module`` into a pure JAX function of its
weights, which ``jax.jit`` lowers and XLA compiles. Weights and outputs are exactly
the PyTorch model's; only the kernels differ.

XLA compiles one executable per input shape, so shapes are bucketed: the sequence
length is padded up to the next length bucket (powers of two from 16 up to the model's
input limit) and the batch up to the next batch bucket (1, 2, 4, ... 64; larger batches
run in chunks of the largest). Pad columns have ``attention_mask`` 0, so they change no
real token's output; pad rows are sliced off. Serving therefore compiles at most
``len(lengths) x len(batches)`` executables, each on first use, or at load for the
batch sizes in ``warmup`` (what a search measures and a server sees most: 1 and 32).

Threads: XLA's CPU client sizes its intra-op pool from the CPUs this process may run
on (its affinity mask), and neither JAX nor XLA offers a public setting for it: the
``--xla_cpu_multi_thread_eigen=false`` flag, the nearest thing, was measured to leave
both cores of a 2-core host busy (jaxlib 0.10.2 parallelizes in its own thunk
runtime). So ``compute_threads()`` cannot be honoured here; when it asks for fewer
threads than there are cores the backend says so at load, and ``taskset`` (or a
container's CPU set) is the way to limit it.

torchax 0.0.13 (the newest on PyPI) fails to import on torch >= 2.13: it names ATen
overloads of named tensors, which torch 2.13 removed (google/torchax#102 fixes that
upstream, not yet released). ``_import_torchax`` stands in for exactly those overloads
while torchax imports and builds its environment, then removes the stand-ins; see
tests/unit/test_jax.py's contract test. Importing torchax also renames torch's
``privateuse1`` device to ``jax`` and turns off the ``nn.MultiheadAttention`` fast path
for the whole process; neither is used by the transformers models squeezer serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from squeezer.backends.device import compute_threads, physical_cores, torch_dtype
from squeezer.backends.graph_io import gather_positions, requested, require_cpu
from squeezer.errors import ModelLoadError
from squeezer.models.folder import is_sequence_classifier
from squeezer.types import NamedArrays

log = logging.getLogger(__name__)

_HIDDEN = "last_hidden_state"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_INSTALL = "pip install 'squeezer[jax]'"
#: Default batch buckets; a batch above the last runs in chunks of it.
BATCHES = (1, 2, 4, 8, 16, 32, 64)
_SMALLEST_LENGTH = 16
_DTYPES = ("float32", "bfloat16")
#: ATen overloads of named tensors that torchax 0.0.13 names at import and torch 2.13
#: removed (the list google/torchax#102 drops): packet -> overload names.
_NAMED_OVERLOADS = {
    "all": ("dimname", "dimname_out"),
    "index_add": ("dimname",),
    "index_copy": ("dimname",),
    "index_copy_": ("dimname",),
    "index_fill": ("Dimname_Scalar", "Dimname_Tensor"),
    "index_fill_": ("Dimname_Scalar", "Dimname_Tensor"),
    "norm": ("names_ScalarOpt_dim", "names_ScalarOpt_dim_dtype", "names_dtype_out", "names_out"),
    "std": ("names_dim", "names_out", "correction_names", "correction_names_out"),
    "std_mean": ("names_dim", "correction_names"),
    "unbind": ("Dimname",),
    "prod": ("dim_Dimname",),
}

Array = np.ndarray[Any, Any]


def _import_torchax() -> ModuleType:
    """Import torchax and build its default environment, on torch releases with or
    without named-tensor overloads.

    Each missing overload gets a placeholder on its (public) ``torch.ops.aten`` packet
    for the duration: torchax only puts them in dicts of autocast policies and
    decompositions, where a key nothing ever looks up is inert. The placeholders are
    removed again, so nothing else in the process sees them.
    """
    added = []
    for packet_name, overloads in _NAMED_OVERLOADS.items():
        packet = getattr(torch.ops.aten, packet_name)
        for overload in overloads:
            if not hasattr(packet, overload):
                setattr(packet, overload, object())
                added.append((packet, overload))
    try:
        import torchax

        torchax.default_env()  # loads torchax's decompositions, which name them too
    except ImportError as e:
        raise ModelLoadError(f"the jax backend needs torchax and jax: {_INSTALL} ({e})") from e
    finally:
        for packet, overload in added:
            delattr(packet, overload)
    return torchax


def _configure_xla() -> None:
    """CPU only: no probing for TPU/GPU plugins (which logs at INFO and takes time).
    Takes effect only before JAX's first computation in the process."""
    try:
        import jax
    except ImportError as e:
        raise ModelLoadError(f"the jax backend needs jax: {_INSTALL} ({e})") from e
    if not getattr(jax.config, "jax_platforms", None):
        jax.config.update("jax_platforms", "cpu")
    threads, cores = compute_threads(), physical_cores()
    if threads < cores:
        log.warning(
            "jax: XLA computes on all %d cores this process may use; %d thread(s) were "
            "asked for, which XLA offers no setting for (run under taskset to limit it)",
            cores,
            threads,
        )


def length_buckets(limit: int) -> tuple[int, ...]:
    """Powers of two from 16 below ``limit``, then ``limit`` itself."""
    buckets = []
    n = _SMALLEST_LENGTH
    while n < limit:
        buckets.append(n)
        n *= 2
    return (*buckets, limit)


def _bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``n``; ``n`` itself past the largest (a shape of
    its own, compiled once: the tokenizer's limit normally keeps lengths in range)."""
    return next((b for b in buckets if b >= n), n)


def _input_limit(path: Path, config: Any) -> int:
    """The longest input the folder's tokenizer settings let through."""
    from squeezer.models import read_folder

    try:
        return read_folder(path).max_input_length
    except ModelLoadError:
        return int(getattr(config, "max_position_embeddings", 512) or 512)


class JaxBackend:
    """Runs a transformers encoder (and a sequence classifier's head) under XLA.

    Outputs: ``last_hidden_state``, plus ``logits`` for a sequence classifier, as the
    exported runtimes give them. ``lengths`` and ``batches`` are the shape buckets
    (defaults: see the module docstring); ``warmup`` names batch sizes compiled for
    every length bucket at load, so that no request (and no timing) pays a compile.
    ``dtype`` bfloat16 casts the weights and runs XLA's bf16 kernels; outputs are
    float32 either way.
    """

    name = "jax"

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        lengths: Sequence[int] | None = None,
        batches: Sequence[int] | None = None,
        warmup: Sequence[int] = (),
    ) -> None:
        require_cpu("jax", device)
        if dtype not in _DTYPES:
            raise ModelLoadError(
                f"the jax backend runs {' or '.join(_DTYPES)}; dtype {dtype!r} asked for"
            )
        self.device = device
        self.dtype = dtype
        _configure_xla()
        torchax = _import_torchax()
        import jax

        model, self._outputs = self._load(path, dtype)
        limit = _input_limit(path, model.config)
        self.lengths = tuple(sorted(set(lengths or length_buckets(limit))))
        self.batches = tuple(sorted(set(batches or BATCHES)))
        if self.lengths[0] < 1 or self.batches[0] < 1:
            raise ModelLoadError(
                f"buckets must be positive: lengths {self.lengths}, batches {self.batches}"
            )
        self._inputs = self._accepted(model)
        try:
            self._states, function = torchax.extract_jax(
                _KeywordForward(model, self._inputs, self._outputs)
            )
        except Exception as e:  # torchax raises whatever the module's tracing raises
            raise ModelLoadError(f"torchax could not take {path}'s model: {e}") from e
        self._model = model  # traced again for each new shape
        self._jitted = jax.jit(function)
        self._compiled: dict[tuple[int, int], Callable[..., Any]] = {}
        #: Seconds spent compiling so far (load's warm-up included).
        self.compile_s = 0.0
        try:
            for batch in warmup:
                for length in self.lengths:
                    self._executable(_bucket(batch, self.batches), length)
        except Exception as e:
            raise ModelLoadError(f"XLA could not compile {path}'s model: {e}") from e
        if warmup:
            log.info(
                "jax: %d shapes compiled in %.1f s (batches %s x lengths %s)",
                len(self._compiled),
                self.compile_s,
                list(warmup),
                list(self.lengths),
            )

    @staticmethod
    def _load(path: Path, dtype: str) -> tuple[Any, tuple[str, ...]]:
        import transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a server log is no terminal
        try:
            config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
            classifier = is_sequence_classifier(config.architectures or ())
            auto = "AutoModelForSequenceClassification" if classifier else "AutoModel"
            model = getattr(transformers, auto).from_pretrained(
                path,
                config=config,
                dtype=torch_dtype(dtype),
                attn_implementation="sdpa",
                local_files_only=True,
            )
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"could not load {path} with transformers: {e}") from e
        outputs = (_HIDDEN, "logits") if classifier else (_HIDDEN,)
        return model.eval(), outputs

    @staticmethod
    def _accepted(model: Any) -> tuple[str, ...]:
        import inspect

        params = inspect.signature(model.forward).parameters
        return tuple(n for n in _INPUTS if n in params)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    def _executable(self, batch: int, length: int) -> Callable[..., Any]:
        """The compiled forward for one bucket shape, compiled on first use."""
        key = (batch, length)
        compiled = self._compiled.get(key)
        if compiled is None:
            import jax

            t0 = time.perf_counter()
            shape = jax.ShapeDtypeStruct((batch, length), np.int32)
            args = tuple(shape for _ in self._inputs)
            compiled = self._jitted.lower(self._states, args).compile()
            spent = time.perf_counter() - t0
            self.compile_s += spent
            self._compiled[key] = compiled
            log.debug("jax: compiled batch %d x length %d in %.2f s", batch, length, spent)
        return compiled

    def forward(self, inputs: NamedArrays, outputs: Sequence[str] | None = None) -> NamedArrays:
        wanted = requested(outputs, self._outputs)
        ids = inputs["input_ids"]
        rows, width = ids.shape
        step = self.batches[-1]
        parts = [
            self._run(inputs, wanted, start, min(start + step, rows), width)
            for start in range(0, max(rows, 1), step)
        ]
        results = {
            name: parts[0][name] if len(parts) == 1 else np.concatenate([p[name] for p in parts])
            for name in wanted
        }
        return gather_positions(results, inputs)

    def _run(
        self, inputs: NamedArrays, wanted: Sequence[str], start: int, end: int, width: int
    ) -> dict[str, Array]:
        """Rows ``start:end``, padded to their bucket shape; ``wanted`` cut back."""
        rows = end - start
        batch, length = _bucket(rows, self.batches), _bucket(width, self.lengths)
        padded = []
        for name in self._inputs:
            array = np.zeros((batch, length), dtype=np.int32)
            value = inputs.get(name)
            if value is not None:
                array[:rows, :width] = value[start:end]
            elif name == "attention_mask":
                array[:rows, :width] = 1
            if name == "attention_mask":
                # Pad rows attend to their first (pad) token: a row with nothing to
                # attend to would be NaN. They are cut off below either way.
                array[rows:, 0] = 1
            padded.append(array)
        out = self._executable(batch, length)(self._states, tuple(padded))
        return {
            name: np.array(value[:rows, :width] if value.ndim == 3 else value[:rows], np.float32)
            for name, value in ((n, np.asarray(out[n])) for n in wanted)
        }

    def close(self) -> None:
        del self._compiled, self._jitted, self._states, self._model


class _KeywordForward(torch.nn.Module):
    """The model called by keyword (BERT's positional order is not ids, mask, types),
    returning a dict of its outputs: torchax hands dicts back as JAX pytrees."""

    def __init__(self, model: Any, names: tuple[str, ...], outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.classifier = "logits" in outputs

    def forward(self, *arrays: torch.Tensor) -> dict[str, torch.Tensor]:
        kwargs = dict(zip(self.names, arrays, strict=True))
        if not self.classifier:
            return {_HIDDEN: self.model(**kwargs).last_hidden_state}
        out = self.model(**kwargs, output_hidden_states=True)
        return {_HIDDEN: out.hidden_states[-1], "logits": out.logits}

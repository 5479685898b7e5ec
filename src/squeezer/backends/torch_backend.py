"""The reference runtime: eager PyTorch with SDPA attention, on any device and dtype."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from squeezer.backends.device import torch_dtype
from squeezer.errors import DeviceOutOfMemoryError, ModelLoadError
from squeezer.types import NamedArrays

#: Arrays a BERT-style encoder accepts; anything else in the batch is ignored.
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
#: Head architectures by suffix -> the ``transformers`` auto class and its outputs.
_HEADS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("ForSequenceClassification", "AutoModelForSequenceClassification", ("logits",)),
    ("ForTokenClassification", "AutoModelForTokenClassification", ("logits",)),
    ("ForMaskedLM", "AutoModelForMaskedLM", ("logits",)),
    (
        "ForQuestionAnswering",
        "AutoModelForQuestionAnswering",
        ("start_logits", "end_logits"),
    ),
)
_HIDDEN = "last_hidden_state"


def auto_class(architectures: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    for arch in architectures:
        for suffix, auto, outputs in _HEADS:
            if arch.endswith(suffix):
                return auto, outputs
    return "AutoModel", ()


class TorchBackend:
    """Runs a transformers model (with its task head, when it has one) forward.

    Outputs: ``last_hidden_state`` always, plus the head's (``logits``, or
    ``start_logits``/``end_logits``). A batch asking only for hidden states runs the
    encoder without its head; vocabulary logits are projected only at the
    ``logit_positions`` the batch names, when it names any.

    Inputs arrive as int64 numpy arrays and go to the device with one copy each
    (non-blocking from pinned memory on CUDA); outputs come back as float32 numpy so
    that tasks post-process the same way whatever the compute dtype.
    """

    name = "torch"

    def __init__(
        self, path: Path, *, device: str = "cpu", dtype: str = "float32", compile: bool = False
    ) -> None:
        import transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a server log is no terminal

        self.device = device
        self.dtype = dtype
        try:
            config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
            auto, self._head_outputs = auto_class(config.architectures or ())
            self._model = getattr(transformers, auto).from_pretrained(
                path,
                config=config,
                dtype=torch_dtype(dtype),
                attn_implementation="sdpa",
                local_files_only=True,
            )
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"could not load {path} with transformers: {e}") from e
        self._model.eval().to(device)
        self._encoder = self._model.base_model
        #: The encoder as called for hidden states; with ``compile``, an inductor graph
        #: with dynamic batch and length, built on the first call (warm-up pays for it).
        self._run_encoder: Any = (
            torch.compile(self._encoder, dynamic=True) if compile else self._encoder
        )
        self._projection = self._model.get_output_embeddings() if self._head_outputs else None
        self._accepts = self._forward_params()
        self._cuda = device.startswith("cuda")

    def _forward_params(self) -> frozenset[str]:
        import inspect

        params = inspect.signature(self._encoder.forward).parameters
        return frozenset(n for n in _INPUT_NAMES if n in params)

    @property
    def output_names(self) -> tuple[str, ...]:
        return (_HIDDEN, *self._head_outputs)

    def _to_device(self, array: np.ndarray[Any, Any]) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self._cuda:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    @contextlib.contextmanager
    def _gathered(self, positions: torch.Tensor | None) -> Iterator[None]:
        """Feed the vocabulary projection only the hidden states at ``positions``."""
        if positions is None or self._projection is None:
            yield
            return

        def gather(_module: Any, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
            return (args[0][positions[:, 0], positions[:, 1]],)

        handle = self._projection.register_forward_pre_hook(gather)
        try:
            yield
        finally:
            handle.remove()

    @torch.inference_mode()
    def forward(self, inputs: NamedArrays, outputs: Sequence[str] | None = None) -> NamedArrays:
        wanted = set(outputs if outputs is not None else self.output_names)
        unknown = wanted - set(self.output_names)
        if unknown:
            raise ValueError(
                f"outputs {sorted(unknown)} not produced; this model gives "
                f"{list(self.output_names)}"
            )
        try:
            return self._forward(inputs, wanted)
        except torch.OutOfMemoryError as e:
            # What the failed pass allocated is garbage now: give it back before the
            # queue retries smaller parts of the batch.
            torch.cuda.empty_cache()
            shape = tuple(inputs["input_ids"].shape) if "input_ids" in inputs else "?"
            raise DeviceOutOfMemoryError(f"batch of shape {shape} did not fit: {e}") from e

    def _forward(self, inputs: NamedArrays, wanted: set[str]) -> NamedArrays:
        kwargs = {k: self._to_device(v) for k, v in inputs.items() if k in self._accepts}
        heads = [name for name in self._head_outputs if name in wanted]
        result: dict[str, torch.Tensor] = {}
        if not heads:
            result[_HIDDEN] = self._run_encoder(**kwargs).last_hidden_state
        else:
            positions = inputs.get("logit_positions")
            gather = self._to_device(positions) if positions is not None else None
            with self._gathered(gather):
                out = self._model(**kwargs, output_hidden_states=_HIDDEN in wanted)
            result.update({name: getattr(out, name) for name in heads})
            if _HIDDEN in wanted:
                result[_HIDDEN] = out.hidden_states[-1]
        return {name: t.float().cpu().numpy() for name, t in result.items()}

    def close(self) -> None:
        del self._model, self._encoder, self._run_encoder, self._projection
        if self._cuda:
            torch.cuda.empty_cache()

"""The fp32 OpenVINO IR every OpenVINO candidate starts from: torch -> ``ov.Model``.

The model is converted once per search (``ctx.cache``) with SDPA attention: OpenVINO's
converter turns eager and SDPA attention alike into its ``ScaledDotProductAttention``
op (same graph, same accuracy), and SDPA is what the torch reference runs and traces
faster. The IR keeps fp32 weights (``compress_to_fp16=False``): the fp32 candidate
must be exact.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from squeezer.backends.openvino_backend import MODEL_BIN, MODEL_XML
from squeezer.errors import ModelLoadError
from squeezer.models import ModelFolder
from squeezer.models.folder import is_sequence_classifier
from squeezer.optimize.candidate import BuildContext, input_names

FILES = (MODEL_XML, MODEL_BIN)

_HIDDEN = "last_hidden_state"


def versions(nncf: Any = None) -> dict[str, str]:
    import openvino

    found = {"openvino": openvino.get_version()}
    if nncf is not None:  # imported by int8 builds only: it takes seconds to import
        found["nncf"] = nncf.__version__
    return found


def io_names(model: Any) -> dict[str, object]:
    return {
        "inputs": [p.get_any_name() for p in model.inputs],
        "outputs": [p.get_any_name() for p in model.outputs],
    }


def save(model: Any, folder: Path) -> tuple[str, ...]:
    """Write ``model`` as the IR the backend loads from ``folder``."""
    import openvino as ov

    ov.save_model(model, folder / MODEL_XML, compress_to_fp16=False)
    return FILES


def fp32_model(ctx: BuildContext) -> Any:
    """The fp32 ``ov.Model``: converted once per search and kept as an IR in
    ``ctx.cache`` for every variant (each reads its own copy: NNCF edits in place);
    converted afresh when there is no cache."""
    import openvino as ov

    xml = ctx.cache / "openvino" / "fp32.xml" if ctx.cache is not None else None
    if xml is not None and xml.is_file() and xml.with_suffix(".bin").is_file():
        return ov.Core().read_model(xml)
    try:
        model, _, _ = _convert(ctx.source)
    except Exception as e:  # torch tracing and the converter raise many kinds
        raise ModelLoadError(f"OpenVINO conversion of {ctx.source.path} failed: {e}") from e
    if xml is not None:
        xml.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, xml, compress_to_fp16=False)
    return model


def _io(model: Any) -> dict[str, object]:
    return {
        "inputs": [p.get_any_name() for p in model.inputs],
        "outputs": [p.get_any_name() for p in model.outputs],
    }


def _save(model: Any, ctx: BuildContext) -> tuple[str, ...]:
    import openvino as ov

    ov.save_model(model, ctx.out / MODEL_XML, compress_to_fp16=False)
    return FILES


def _convert(folder: ModelFolder) -> tuple[Any, list[str], list[str]]:
    """torch -> ``ov.Model`` with dynamic batch and length; returns it with its input
    and output names."""
    import openvino as ov
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    config = transformers.AutoConfig.from_pretrained(folder.path, local_files_only=True)
    classifier = is_sequence_classifier(config.architectures or ())
    auto = "AutoModelForSequenceClassification" if classifier else "AutoModel"
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = getattr(transformers, auto).from_pretrained(
            folder.path, config=config, attn_implementation="sdpa", local_files_only=True
        )
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.eval()
    inputs = input_names(folder, model)
    outputs = [_HIDDEN, "logits"] if classifier else [_HIDDEN]

    class KeywordForward(torch.nn.Module):
        """BERT's positional arguments are not (ids, mask, types): call by keyword."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> Any:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            if not classifier:
                return self.model(**kwargs).last_hidden_state
            out = self.model(**kwargs, output_hidden_states=True)
            return out.hidden_states[-1], out.logits

    batch, length = 2, 16
    ids = torch.randint(5, int(config.vocab_size), (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, length // 2 :] = 0  # padding in the example: the mask path must be traced
    example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about data-dependent branches
        # Without ``input=`` every dimension is dynamic and types follow the example
        # (int64); naming the inputs there would add a preprocessing pass that only
        # costs conversion time.
        ov_model = ov.convert_model(
            KeywordForward(), example_input=tuple(example[n] for n in inputs)
        )
    for port, name in zip(ov_model.inputs, inputs, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(ov_model.outputs, outputs, strict=True):
        port.get_tensor().set_names({name})
    if any(not d.is_dynamic for p in ov_model.inputs for d in p.get_partial_shape()):
        ov_model.reshape({name: ov.PartialShape([-1, -1]) for name in inputs})
    return ov_model, inputs, outputs

"""OpenVINO candidates: one torch -> IR conversion, then fp32 and two int8 variants.

The model is converted once per search (``ctx.cache``) with SDPA attention: OpenVINO's
converter turns eager and SDPA attention alike into its ``ScaledDotProductAttention``
op (same graph, same accuracy), and SDPA is what the torch reference runs and traces
faster. The IR keeps fp32 weights (``compress_to_fp16=False``): the fp32 candidate
must be exact.

The int8 variants come from NNCF:

- ``weights``: weight-only compression (per-channel INT8_ASYM, embeddings included);
  activations stay fp32, so it is cheap in accuracy and mostly saves memory traffic.
- ``static``: full int8 with FakeQuantize nodes whose activation ranges come from the
  calibration split. The overflow fix is on for every layer: without VNNI, AVX2's
  u8 x s8 multiply-add saturates 16-bit intermediates, so weights are kept to 7 bits.
- ``vnni``: the same with 8-bit weights (no overflow fix), for CPUs whose VNNI or AMX
  accumulates in 32 bits: closer to fp32 at the same speed.

NNCF's accuracy control (``quantize_with_accuracy_control``: rank the quantizers, revert
the costliest to float until a metric is met) was tried for a mixed-precision variant
and left out: on MiniLM, at a 0.004 min-cosine drop on 128 calibration sentences, it
took 515 s on 2 cores and reverted every quantizer, an fp32 IR at int8 build cost.

On CPUs with AVX512_BF16 or AMX, the ``bf16`` candidates run what stays in float in
bf16 (OpenVINO's inference precision hint): the fp32 IR as a whole, or the float
layers of an int8 IR.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np

from squeezer.backends.openvino_backend import MODEL_BIN, MODEL_XML
from squeezer.errors import ModelLoadError
from squeezer.models import ModelFolder
from squeezer.models.manifest import BF16, VNNI
from squeezer.optimize.candidate import (
    BuildContext,
    BuildInfo,
    Candidate,
    encoder_only,
    input_names,
)
from squeezer.types import Task

FILES = (MODEL_XML, MODEL_BIN)

_HIDDEN = "last_hidden_state"
_CLASSIFIER = "ForSequenceClassification"
#: Weight-only mode: asymmetric int8 measured closer to fp32 than symmetric on
#: all-MiniLM-L6-v2 (pooled cosine min/mean 0.9992/0.9997 vs 0.9990/0.9995).
_WEIGHT_MODE = "int8_asym"
_INSTALL = "pip install 'squeezer[openvino]'"


def supports(folder: ModelFolder) -> str | None:
    return encoder_only(folder, "OpenVINO")


def _versions(nncf: Any = None) -> dict[str, str]:
    import openvino

    versions = {"openvino": openvino.get_version()}
    if nncf is not None:  # imported by int8 builds only: it takes seconds to import
        versions["nncf"] = nncf.__version__
    return versions


def _nncf() -> Any:
    try:
        import nncf
    except ImportError as e:
        raise ModelLoadError(f"int8 OpenVINO builds need the nncf package: {_INSTALL}") from e
    return nncf


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs INFO lines and draws rich progress bars on stdout; a build is part of
    a search with its own report, so both are off while it runs."""
    import rich
    from nncf.common.logging.logger import nncf_logger, set_log_level

    console = rich.get_console()
    level, quiet = nncf_logger.level, console.quiet
    set_log_level(logging.ERROR)
    console.quiet = True
    try:
        yield
    finally:
        console.quiet = quiet
        set_log_level(level)


# --- conversion -------------------------------------------------------------------


def _convert(folder: ModelFolder) -> tuple[Any, list[str], list[str]]:
    """torch -> ``ov.Model`` with dynamic batch and length; returns it with its input
    and output names."""
    import openvino as ov
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    config = transformers.AutoConfig.from_pretrained(folder.path, local_files_only=True)
    classifier = any(a.endswith(_CLASSIFIER) for a in config.architectures or ())
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


def _fp32_model(ctx: BuildContext) -> Any:
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


# --- variants ---------------------------------------------------------------------


def build_fp32(ctx: BuildContext) -> BuildInfo:
    model = _fp32_model(ctx)
    files = _save(model, ctx)
    details: dict[str, object] = {"mode": "fp32", **_io(model), **_versions()}
    return BuildInfo(files, details)


def _int8_weights(model: Any) -> int:
    """Weights stored in int8 (zero points, one value per row, are not counted)."""
    import openvino as ov

    int8 = {ov.Type.i8, ov.Type.u8}
    count = 0
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and op.get_element_type() in int8:
            shape = op.get_output_partial_shape(0)
            count += shape.rank.get_length() >= 2 and shape[-1].get_length() > 1
    return count


def build_int8_weights(ctx: BuildContext) -> BuildInfo:
    """Weight-only int8: per-channel weights dequantized at run time, fp32 activations."""

    nncf = _nncf()
    model = _fp32_model(ctx)
    with _quiet_nncf():
        # int8 modes compress every weight, embeddings and the head included
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode(_WEIGHT_MODE))
    files = _save(model, ctx)
    details: dict[str, object] = {
        "mode": f"weights {_WEIGHT_MODE}, per channel",
        "int8_weights": _int8_weights(model),
        **_io(model),
        **_versions(nncf),
    }
    return BuildInfo(files, details)


def _calibration_samples(ctx: BuildContext) -> list[dict[str, np.ndarray[Any, Any]]]:
    """One sentence per sample, unpadded (batch 1): ranges never see pad tokens."""
    from squeezer.tasks.tokenizer import TextTokenizer

    texts = [t for t in ctx.calibration if t.strip()]
    if not texts:
        raise ModelLoadError("static int8 quantization needs calibration text; none was given")
    tokenizer = TextTokenizer(ctx.source.tokenizer_file, ctx.source.max_input_length)
    samples = []
    for tok in tokenizer.encode(texts, truncate=True):
        ids = tok.ids[None, :]
        types = tok.type_ids[None, :] if tok.type_ids is not None else np.zeros_like(ids)
        samples.append(
            {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types}
        )
    return samples


def build_int8_static(ctx: BuildContext, *, overflow_fix: str = "enable") -> BuildInfo:
    """Full int8 (weights and activations), ranges from the calibration split.

    ``overflow_fix`` is NNCF's ``OverflowFix`` value: ``enable`` (7-bit weights in
    every layer, no saturation possible without VNNI), ``first_layer_only`` or
    ``disable`` (8-bit weights: closer to fp32 when nothing saturates).
    """

    nncf = _nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
    )

    samples = _calibration_samples(ctx)
    model = _fp32_model(ctx)
    names = [p.get_any_name() for p in model.inputs]

    def feed(sample: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        return {n: sample[n] for n in names}

    overflow = OverflowFix(overflow_fix)
    with _quiet_nncf():
        model = nncf.quantize(
            model,
            nncf.Dataset(samples, feed),
            preset=nncf.QuantizationPreset.MIXED,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(samples),
            advanced_parameters=AdvancedQuantizationParameters(overflow_fix=overflow),
        )
    files = _save(model, ctx)
    fake_quantize = sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")
    details: dict[str, object] = {
        "mode": "static int8, preset mixed, transformer",
        "overflow_fix": overflow.value,
        "calibration_samples": len(samples),
        "fake_quantize_nodes": fake_quantize,
        **_io(model),
        **_versions(nncf),
    }
    return BuildInfo(files, details)


#: Tasks the IR serves: hidden states for embeddings always; a sequence classifier's
#: logits for the tasks that read them.
_TASKS = frozenset({Task.EMBED, Task.CLASSIFY, Task.RERANK, Task.ZERO_SHOT})
_BF16 = {"inference_precision": "bf16"}

CANDIDATES: tuple[Candidate, ...] = (
    Candidate("openvino", "float32", build=build_fp32, tasks=_TASKS),
    Candidate("openvino", "bfloat16", build=build_fp32, tasks=_TASKS, options=_BF16, needs=(BF16,)),
    Candidate("openvino", "int8", "weights", build=build_int8_weights, tasks=_TASKS),
    Candidate("openvino", "int8", "static", build=build_int8_static, tasks=_TASKS),
    Candidate(
        "openvino",
        "int8",
        "vnni",
        build=partial(build_int8_static, overflow_fix="disable"),
        tasks=_TASKS,
        needs=(VNNI,),
    ),
    Candidate(
        "openvino",
        "int8",
        "vnni-bf16",
        build=partial(build_int8_static, overflow_fix="disable"),
        tasks=_TASKS,
        options=_BF16,
        needs=(VNNI, BF16),
    ),
)

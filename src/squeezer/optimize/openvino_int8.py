"""NNCF's int8 recipes for the OpenVINO IR: weight-only, static, and static with the
costliest activation quantizers kept in float (mixed precision).

- ``weights``: weight-only compression (per-channel INT8_ASYM, embeddings included);
  activations stay fp32, so it is cheap in accuracy and mostly saves memory traffic.
- ``static``: full int8 with FakeQuantize nodes whose activation ranges come from the
  calibration split. ``overflow_fix="enable"`` keeps weights to 7 bits in every layer:
  without VNNI, AVX2's u8 x s8 multiply-add saturates 16-bit intermediates.
  ``"disable"`` (8-bit weights) is for CPUs whose VNNI or AMX accumulates in 32 bits:
  closer to fp32 at the same speed.
- ``keep``: the static model with a fraction of its activation quantizers removed, the
  costliest first. A trained encoder's error is concentrated in a few layers (the FFN
  output's post-GELU outliers, mostly), so keeping those in float buys most of the
  accuracy back for a small part of int8's speed. Each quantizer's cost is the
  calibration loss with only it kept, measured once per search on the calibration
  split (never the splits the gate and the report read), as the ONNX Runtime builds do.

NNCF's accuracy control (``quantize_with_accuracy_control``: rank the quantizers, revert
the costliest to float until a metric is met) was tried for the mixed variant first and
left out: on MiniLM, at a 0.004 min-cosine drop on 128 calibration sentences, it took
515 s on 2 cores and reverted every quantizer, an fp32 IR at int8 build cost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np

from squeezer.errors import ModelLoadError
from squeezer.optimize.candidate import BuildContext, BuildInfo
from squeezer.optimize.openvino_ir import fp32_model, io_names, save, versions

#: Weight-only mode: asymmetric int8 measured closer to fp32 than symmetric on
#: all-MiniLM-L6-v2 (pooled cosine min/mean 0.9992/0.9997 vs 0.9990/0.9995).
_WEIGHT_MODE = "int8_asym"
_INSTALL = "pip install 'squeezer[openvino]'"


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


# --- weight-only ------------------------------------------------------------------


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
    model = fp32_model(ctx)
    with _quiet_nncf():
        # int8 modes compress every weight, embeddings and the head included
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode(_WEIGHT_MODE))
    files = save(model, ctx.out)
    details: dict[str, object] = {
        "mode": f"weights {_WEIGHT_MODE}, per channel",
        "int8_weights": _int8_weights(model),
        **io_names(model),
        **versions(nncf),
    }
    return BuildInfo(files, details)


# --- static -----------------------------------------------------------------------


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


def _static_model(ctx: BuildContext, overflow_fix: str) -> tuple[Any, dict[str, object]]:
    """The fully quantized model and its details; quantized once per search and
    overflow fix (``ctx.cache``), since the mixed variants all start from it."""
    import openvino as ov

    cached = ctx.cache / "openvino" / f"int8-{overflow_fix}.xml" if ctx.cache else None
    if cached is not None and cached.is_file():
        known: dict[str, object] = json.loads(cached.with_suffix(".json").read_text())
        return ov.Core().read_model(cached), known

    nncf = _nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
    )

    samples = _calibration_samples(ctx)
    model = fp32_model(ctx)
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
    details: dict[str, object] = {
        "mode": "static int8, preset mixed, transformer",
        "overflow_fix": overflow.value,
        "calibration_samples": len(samples),
        "fake_quantize_nodes": len(_activation_quantizers(model)),
        **versions(nncf),
    }
    if cached is not None:
        ov.save_model(model, cached, compress_to_fp16=False)
        cached.with_suffix(".json").write_text(json.dumps(details))
    return model, details


def build_int8_static(ctx: BuildContext, *, overflow_fix: str = "enable") -> BuildInfo:
    """Full int8 (weights and activations), ranges from the calibration split.

    ``overflow_fix`` is NNCF's ``OverflowFix`` value: ``enable`` (7-bit weights in
    every layer, no saturation possible without VNNI), ``first_layer_only`` or
    ``disable`` (8-bit weights: closer to fp32 when nothing saturates).
    """
    model, details = _static_model(ctx, overflow_fix)
    files = save(model, ctx.out)
    return BuildInfo(files, {**details, **io_names(model)})


# --- mixed precision ----------------------------------------------------------------


def _activation_quantizers(model: Any) -> list[str]:
    """Names of the FakeQuantize nodes on activations, in graph order (NNCF stores
    the weights already quantized, as int8 constants, so those have none)."""
    return [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "FakeQuantize"
        and op.input_value(0).get_node().get_type_name() != "Constant"
    ]


def _without(model: Any, names: set[str]) -> Any:
    """A copy of ``model`` with the named quantizers bypassed: their consumers read the
    float activation (their weights stay int8, dequantized to float)."""
    copy = model.clone()
    for op in copy.get_ops():
        if op.get_friendly_name() in names:
            op.output(0).replace(op.input_value(0))
    return copy


def _costs(ctx: BuildContext, model: Any, overflow_fix: str) -> list[tuple[str, float]]:
    """Each activation quantizer's cost, the costliest first: the calibration loss with
    only it in place. Measured once per search and overflow fix."""
    assert ctx.calibration_loss is not None
    cache = (ctx.cache or ctx.out) / "openvino"
    cache.mkdir(parents=True, exist_ok=True)
    key = cache / f"sensitivity-{overflow_fix}.json"
    if key.is_file():
        return [(n, float(v)) for n, v in json.loads(key.read_text())]
    names = _activation_quantizers(model)
    probe = cache / "probe"
    probe.mkdir(exist_ok=True)
    costs = []
    for name in names:
        save(_without(model, set(names) - {name}), probe)
        costs.append((name, ctx.calibration_loss(probe)))
    costs.sort(key=lambda nc: -nc[1])
    key.write_text(json.dumps(costs))
    shutil.rmtree(probe, ignore_errors=True)
    return costs


def build_int8_mixed(ctx: BuildContext, *, overflow_fix: str, keep_fraction: float) -> BuildInfo:
    """Static int8 with the costliest ``keep_fraction`` of activation quantizers
    removed (at least one)."""
    if ctx.calibration_loss is None:
        raise ModelLoadError("keeping quantizers in float needs a calibration measure")
    model, details = _static_model(ctx, overflow_fix)
    costs = _costs(ctx, model, overflow_fix)
    n = max(1, round(len(costs) * keep_fraction))
    kept = [name for name, _ in costs[:n]]
    model = _without(model, set(kept))
    files = save(model, ctx.out)
    details = {
        **details,
        "mode": f"static int8, {len(kept)} of {len(costs)} activation quantizers in float",
        "kept_in_float": kept,
        "quantizer_costs": {name: round(cost, 6) for name, cost in costs[: 2 * n]},
        **io_names(model),
    }
    return BuildInfo(files, details)

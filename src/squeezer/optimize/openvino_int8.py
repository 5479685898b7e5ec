"""NNCF's int8 recipes for the OpenVINO IR: weight-only, static, and static with the
costliest activation quantizers kept in float (mixed precision).

- ``weights``: weight-only compression (per-channel INT8_ASYM, embeddings included);
  activations stay fp32, so it is cheap in accuracy and mostly saves memory traffic.
- ``static``: full int8 with FakeQuantize nodes whose activation ranges come from the
  calibration split. ``overflow_fix="enable"`` keeps weights to 7 bits in every layer:
  without VNNI, AVX2's u8 x s8 multiply-add saturates 16-bit intermediates.
  ``"disable"`` (8-bit weights) is for CPUs whose VNNI or AMX accumulates in 32 bits:
  closer to fp32 at the same speed.
- ``mixed``: static int8 with one or two kinds of Linear layer (``output.dense`` of
  every encoder layer, say) left in float, weights and activations: a trained
  encoder's error is concentrated in a few kinds (the FFN output's post-GELU outliers,
  mostly), so keeping those buys most of the accuracy back for part of int8's speed.
  Kinds are ranked by what leaving each out of int8 gains on the calibration split
  (never the splits the gate and the report read), one NNCF run per kind; NNCF
  recomputes SmoothQuant and bias correction for each. Bypassing quantizers in one
  calibrated int8 graph instead was tried first and ranks nothing: bias correction
  has compensated the whole graph's error, so every single bypass measured the same.

NNCF's accuracy control (``quantize_with_accuracy_control``: rank the quantizers, revert
the costliest to float until a metric is met) was tried for the mixed variant first and
left out: on MiniLM, at a 0.004 min-cosine drop on 128 calibration sentences, it took
515 s on 2 cores and reverted every quantizer, an fp32 IR at int8 build cost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from collections.abc import Iterator, Sequence
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


def _quantize(ctx: BuildContext, overflow_fix: str, keep: Sequence[str] = ()) -> Any:
    """NNCF's static int8 of the fp32 IR; the MatMuls named in ``keep`` stay in float
    (weights and activations), and SmoothQuant and bias correction are computed with
    them left out, so the rest compensates for what is quantized."""
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

    with _quiet_nncf():
        return nncf.quantize(
            model,
            nncf.Dataset(samples, feed),
            preset=nncf.QuantizationPreset.MIXED,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(samples),
            ignored_scope=nncf.IgnoredScope(names=list(keep)) if keep else None,
            advanced_parameters=AdvancedQuantizationParameters(
                overflow_fix=OverflowFix(overflow_fix)
            ),
        )


def _details(ctx: BuildContext, model: Any, overflow_fix: str) -> dict[str, object]:
    return {
        "mode": "static int8, preset mixed, transformer",
        "overflow_fix": overflow_fix,
        "calibration_samples": sum(1 for t in ctx.calibration if t.strip()),
        "fake_quantize_nodes": sum(
            1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize"
        ),
        **versions(_nncf()),
    }


def build_int8_static(ctx: BuildContext, *, overflow_fix: str = "enable") -> BuildInfo:
    """Full int8 (weights and activations), ranges from the calibration split.

    ``overflow_fix`` is NNCF's ``OverflowFix`` value: ``enable`` (7-bit weights in
    every layer, no saturation possible without VNNI), ``first_layer_only`` or
    ``disable`` (8-bit weights: closer to fp32 when nothing saturates).
    """
    model = _quantize(ctx, overflow_fix)
    files = save(model, ctx.out)
    return BuildInfo(files, {**_details(ctx, model, overflow_fix), **io_names(model)})


# --- mixed precision ----------------------------------------------------------------


def linear_kinds(model: Any) -> dict[str, list[str]]:
    """The model's Linear layers (MatMuls with a constant weight) grouped by kind: the
    module path with its layer index removed (``encoder.layer.N.output.dense``)."""
    kinds: dict[str, list[str]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        if op.input_value(1).get_node().get_type_name() != "Constant":
            continue  # attention's own products: activations on both sides
        name = op.get_friendly_name()
        kinds.setdefault(re.sub(r"\.\d+\.", ".N.", name.split("/")[0]), []).append(name)
    return kinds


def _gains(ctx: BuildContext, overflow_fix: str) -> list[tuple[str, float]]:
    """What keeping each kind of Linear in float buys: the calibration loss of full
    int8 minus that with the kind left out, the largest first. Measured once per
    search and overflow fix (one NNCF run per kind)."""
    assert ctx.calibration_loss is not None
    cache = (ctx.cache or ctx.out) / "openvino"
    cache.mkdir(parents=True, exist_ok=True)
    key = cache / f"kind-gains-{overflow_fix}.json"
    if key.is_file():
        return [(k, float(v)) for k, v in json.loads(key.read_text())]
    kinds = linear_kinds(fp32_model(ctx))
    probe = cache / "probe"
    probe.mkdir(exist_ok=True)
    save(_quantize(ctx, overflow_fix), probe)
    full = ctx.calibration_loss(probe)
    gains = []
    for kind, names in kinds.items():
        save(_quantize(ctx, overflow_fix, names), probe)
        gains.append((kind, full - ctx.calibration_loss(probe)))
    gains.sort(key=lambda kg: -kg[1])
    key.write_text(json.dumps(gains))
    shutil.rmtree(probe, ignore_errors=True)
    return gains


def build_int8_mixed(ctx: BuildContext, *, overflow_fix: str, keep_kinds: int) -> BuildInfo:
    """Static int8 with the ``keep_kinds`` kinds of Linear whose float buys the most
    accuracy on the calibration split left in float."""
    if ctx.calibration_loss is None:
        raise ModelLoadError("keeping layers in float needs a calibration measure")
    gains = _gains(ctx, overflow_fix)
    kept = [kind for kind, _ in gains[:keep_kinds]]
    kinds = linear_kinds(fp32_model(ctx))
    names = [n for kind in kept for n in kinds[kind]]
    model = _quantize(ctx, overflow_fix, names)
    files = save(model, ctx.out)
    linears = sum(map(len, kinds.values()))
    details = {
        **_details(ctx, model, overflow_fix),
        "mode": f"static int8, {len(names)} of {linears} Linear layers in float",
        "kept_in_float": kept,
        "kind_gains": {kind: round(gain, 6) for kind, gain in gains},
        **io_names(model),
    }
    return BuildInfo(files, details)

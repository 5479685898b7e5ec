"""ONNX Runtime candidates: one export, ORT's transformer fusions, int8 variants.

The model is exported once per search (``ctx.cache``) with eager attention, which is
what ORT's transformer optimizer pattern-matches: with SDPA it fuses no Attention
node. The fused counts are checked against the layer count and reported, so a model
whose fusions silently failed is visible in the report rather than just slower.

Dynamic int8 variants differ in what AVX2 without VNNI makes of them: per-tensor vs
per-channel weight scales, signed vs unsigned weights, and ``reduce_range`` (7-bit
weights, which avoids the saturation of AVX2's u8 x s8 multiply-add). The ``keep``
variants leave in float the nodes whose quantization costs most, found by measuring
each node alone on the calibration split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from squeezer.backends.onnx_backend import MODEL_FILE
from squeezer.errors import ModelLoadError
from squeezer.models import ModelFolder
from squeezer.optimize.candidate import BuildContext, BuildInfo, Candidate, input_names

log = logging.getLogger(__name__)

#: Model types ORT's "bert" fusions understand (BERT-shaped self-attention blocks).
_FUSABLE_TYPES = {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra"}
_OPSET = 17
#: Ops dynamic quantization turns into integer kernels.
_QUANTIZED_OPS = ("MatMul", "Attention")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The tracer's warnings and the quantizer's root-logger advice are noise to a
    user of ``squeezer optimize``; what matters is reported from the graph itself."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def supports(folder: ModelFolder) -> str | None:
    if any(a.endswith("ForCausalLM") for a in folder.architectures):
        return "decoder models are not exported to ONNX by squeezer yet"
    return None


@dataclass(frozen=True, slots=True)
class _Export:
    fused: Path
    details: dict[str, Any]


def _export(folder: ModelFolder, path: Path) -> tuple[list[str], list[str]]:
    """torch -> ONNX with dynamic batch and length; returns input and output names."""
    import torch
    import transformers

    from squeezer.backends.torch_backend import auto_class

    config = transformers.AutoConfig.from_pretrained(folder.path, local_files_only=True)
    auto, heads = auto_class(config.architectures or ())
    model = getattr(transformers, auto).from_pretrained(
        folder.path, config=config, attn_implementation="eager", local_files_only=True
    )
    model.eval()
    inputs = input_names(folder, model)
    outputs = ["last_hidden_state", *heads]

    class KeywordForward(torch.nn.Module):
        """BERT's positional arguments are not (ids, mask, types): call by keyword."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: torch.Tensor) -> Any:
            kwargs = dict(zip(inputs, args, strict=True))
            if not heads:
                return self.model(**kwargs).last_hidden_state
            out = self.model(**kwargs, output_hidden_states=True)
            return (out.hidden_states[-1], *(getattr(out, name) for name in heads))

    batch, length = 2, 16
    ids = torch.randint(5, int(config.vocab_size), (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, length // 2 :] = 0
    example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    dims = {0: "batch", 1: "sequence"}
    with torch.inference_mode(), _quiet():
        torch.onnx.export(
            KeywordForward(),
            tuple(example[n] for n in inputs),
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes={name: dims for name in (*inputs, *outputs)},
            opset_version=_OPSET,
            dynamo=False,
        )
    return inputs, outputs


def _fuse(folder: ModelFolder, exported: Path, fused: Path) -> dict[str, Any]:
    """ORT's transformer optimizer; returns the fused node counts and whether they are
    what a fully fused encoder of this depth has."""
    from onnxruntime.transformers.optimizer import optimize_model

    layers = int(folder.config.get("num_hidden_layers") or folder.config.get("n_layers") or 0)
    if folder.model_type not in _FUSABLE_TYPES:
        shutil.copyfile(exported, fused)
        return {"fusions": {}, "fully_fused": False, "layers": layers, "fusion_skipped": True}
    heads = int(folder.config.get("num_attention_heads") or folder.config.get("n_heads") or 0)
    model = optimize_model(
        str(exported), model_type="bert", num_heads=heads, hidden_size=folder.hidden_size
    )
    stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    gelu = sum(stats.get(k, 0) for k in ("BiasGelu", "Gelu", "FastGelu", "GemmFastGelu"))
    full = (
        stats.get("Attention", 0) == layers
        and stats.get("SkipLayerNormalization", 0) >= layers
        and gelu == layers
    )
    if not full:
        log.warning("ORT fused %s for %d layers: not a fully fused encoder", stats, layers)
    model.save_model_to_file(str(fused))
    return {"fusions": stats, "fully_fused": full, "layers": layers}


def _exported(ctx: BuildContext) -> _Export:
    """The fused fp32 graph, exported once per search and shared by every variant."""
    cache = ctx.cache or ctx.out
    fused = cache / "onnx" / "fused.onnx"
    meta = cache / "onnx" / "export.json"
    if fused.is_file() and meta.is_file():
        return _Export(fused, json.loads(meta.read_text()))
    fused.parent.mkdir(parents=True, exist_ok=True)
    raw = fused.parent / "exported.onnx"
    try:
        inputs, outputs = _export(ctx.source, raw)
    except Exception as e:  # torch's exporter raises many kinds
        raise ModelLoadError(f"ONNX export of {ctx.source.path} failed: {e}") from e
    details = {
        "inputs": inputs,
        "outputs": outputs,
        "opset": _OPSET,
        **_fuse(ctx.source, raw, fused),
    }
    meta.write_text(json.dumps(details))
    return _Export(fused, details)


def build_fp32(ctx: BuildContext, *, fused: bool = True) -> BuildInfo:
    """The exported graph, with ORT's transformer fusions (or without: the plain export
    under ORT's generic graph optimizations, to show what the fusions are worth)."""
    export = _exported(ctx)
    source = export.fused if fused else export.fused.parent / "exported.onnx"
    shutil.copyfile(source, ctx.out / MODEL_FILE)
    details = export.details if fused else {"inputs": export.details["inputs"]}
    return BuildInfo((MODEL_FILE,), {**details, **_versions()})


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}


@dataclass(frozen=True, slots=True)
class Scheme:
    """A dynamic int8 quantization recipe."""

    per_channel: bool = True
    signed_weights: bool = True
    reduce_range: bool = False
    #: Fraction of quantizable nodes to keep in float, the costliest first.
    keep_fraction: float = 0.0


def _quantize(
    source: Path,
    target: Path,
    scheme: Scheme,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            source,
            target,
            op_types_to_quantize=list(_QUANTIZED_OPS),
            per_channel=scheme.per_channel,
            reduce_range=scheme.reduce_range,
            weight_type=QuantType.QInt8 if scheme.signed_weights else QuantType.QUInt8,
            nodes_to_quantize=list(include) if include is not None else None,
            nodes_to_exclude=list(exclude),
            # A fused graph has contrib ops whose output types the quantizer cannot infer.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def _quantizable(model: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in _QUANTIZED_OPS]


def _sensitivity(ctx: BuildContext, export: _Export, scheme: Scheme) -> list[tuple[str, float]]:
    """Each quantizable node's cost: the calibration loss with only it quantized.

    Measured once per search and scheme, costliest first."""
    assert ctx.calibration_loss is not None
    cache = (ctx.cache or ctx.out) / "onnx"
    base = dataclasses.replace(scheme, keep_fraction=0.0)
    key = cache / f"sensitivity-{_scheme_name(base)}.json"
    if key.is_file():
        return [(n, float(v)) for n, v in json.loads(key.read_text())]
    probe = cache / "probe"
    probe.mkdir(exist_ok=True)
    costs = []
    for node in _quantizable(export.fused):
        _quantize(export.fused, probe / MODEL_FILE, scheme, include=[node])
        costs.append((node, ctx.calibration_loss(probe)))
    costs.sort(key=lambda nc: -nc[1])
    key.write_text(json.dumps(costs))
    shutil.rmtree(probe, ignore_errors=True)
    return costs


def build_int8(ctx: BuildContext, scheme: Scheme) -> BuildInfo:
    export = _exported(ctx)
    kept: list[str] = []
    details: dict[str, Any] = {}
    if scheme.keep_fraction > 0:
        if ctx.calibration_loss is None:
            raise ModelLoadError("keeping nodes in float needs a calibration measure")
        costs = _sensitivity(ctx, export, scheme)
        n = max(1, round(len(costs) * scheme.keep_fraction))
        kept = [name for name, _ in costs[:n]]
        details["node_costs"] = {name: round(cost, 6) for name, cost in costs[: 2 * n]}
    _quantize(export.fused, ctx.out / MODEL_FILE, scheme, exclude=kept)
    details.update(
        {
            "fusions": export.details.get("fusions", {}),
            "per_channel": scheme.per_channel,
            "weight_type": "int8" if scheme.signed_weights else "uint8",
            "reduce_range": scheme.reduce_range,
            "kept_in_float": kept,
            "quantizable_nodes": len(_quantizable(export.fused)),
            **_versions(),
        }
    )
    return BuildInfo((MODEL_FILE,), details)


def _scheme_name(scheme: Scheme) -> str:
    parts = ["per-channel" if scheme.per_channel else "per-tensor"]
    parts.append("s8" if scheme.signed_weights else "u8")
    if scheme.reduce_range:
        parts.append("reduce-range")
    if scheme.keep_fraction:
        parts.append(f"keep{round(scheme.keep_fraction * 100)}pct")
    return "-".join(parts)


_SCHEMES = (
    Scheme(per_channel=False),
    Scheme(),
    Scheme(signed_weights=False),
    Scheme(reduce_range=True),
    Scheme(keep_fraction=0.1),
    Scheme(keep_fraction=0.25),
)

CANDIDATES: tuple[Candidate, ...] = (
    Candidate("onnxruntime", "float32", "fused", build=build_fp32),
    Candidate("onnxruntime", "float32", "unfused", build=partial(build_fp32, fused=False)),
    *(
        Candidate(
            "onnxruntime",
            "int8",
            _scheme_name(s),
            build=partial(build_int8, scheme=s),
        )
        for s in _SCHEMES
    ),
)

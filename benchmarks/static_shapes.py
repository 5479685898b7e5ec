"""Do OpenVINO and ONNX Runtime reward static shapes? Dynamic vs length buckets.

    python benchmarks/static_shapes.py [--out docs/bench/static_shapes]

squeezer compiles its OpenVINO and ORT graphs once with dynamic batch and length,
and pads each batch to its longest row. The alternative TEI-style peers and
ahead-of-time compilers use is a set of static shapes: the length rounded up to a
bucket (16, 32, 64, 128, 256) and the batch to 1 or 32, one compiled model per
shape. It pays more padded tokens for kernels specialized to the shape.

The packaged all-MiniLM-L6-v2 is built as the optimizer builds it (the fp32 IR, also
run with the bf16 hint where the CPU has it; the fused fp32 ONNX graph), then each
runtime runs the same work both ways, interleaved per repetition so that drift on a
shared machine hits both alike:

- ``batch 32``: the corpus in arrival order, 32 sentences per forward pass;
- ``one sentence``: one sentence per forward pass, p50 latency.

Pooled outputs of the two ways are compared (cosine) so a speed-up cannot hide a
wrong answer. Writes OUT/results.json and OUT/static_shapes.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _corpus  # noqa: E402

BUCKETS = (16, 32, 64, 128, 256)
BATCH = 32
Batch = dict[str, np.ndarray]
Run = Callable[[Batch], np.ndarray]


def _bucket(length: int) -> int:
    return next((b for b in BUCKETS if b >= length), length)


def _pad(batch: Batch, rows: int, length: int) -> Batch:
    out = {}
    for name, arr in batch.items():
        padded = np.zeros((rows, length), dtype=arr.dtype)
        padded[: arr.shape[0], : arr.shape[1]] = arr
        out[name] = padded
    return out


def _batches(folder: Path, texts: list[str], size: int) -> list[Batch]:
    from squeezer.models import read_folder
    from squeezer.tasks.tokenizer import TextTokenizer

    source = read_folder(folder)
    tok = TextTokenizer(source.tokenizer_file, source.max_input_length)
    out = []
    for i in range(0, len(texts), size):
        encoded = tok.encode(texts[i : i + size], truncate=True)
        length = max(len(e.ids) for e in encoded)
        ids = np.zeros((len(encoded), length), np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encoded):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return out


def _static(compile_shape: Callable[[int, int], Run]) -> Run:
    """A runner that pads each batch to (1 or BATCH, its length's bucket) and calls the
    model compiled for that shape, compiling each shape once (ahead, by ``warm``)."""
    compiled: dict[tuple[int, int], Run] = {}

    def run(batch: Batch) -> np.ndarray:
        rows, length = batch["input_ids"].shape
        shape = (1 if rows == 1 else BATCH, _bucket(length))
        if shape not in compiled:
            compiled[shape] = compile_shape(*shape)
        return compiled[shape](_pad(batch, *shape))[:rows, :length]

    return run


def openvino_runners(folder: Path, precision: str) -> dict[str, Run]:
    import openvino as ov

    from squeezer.backends.device import compute_threads
    from squeezer.backends.openvino_backend import MODEL_XML, compile_config

    core = ov.Core()
    config = compile_config(compute_threads(), precision)

    def compile_for(shape: list[int]) -> Run:
        model = core.read_model(folder / MODEL_XML)
        model.reshape({p.get_any_name(): ov.PartialShape(shape) for p in model.inputs})
        request = core.compile_model(model, "CPU", config).create_infer_request()
        names = [p.get_any_name() for p in model.inputs]

        def run(batch: Batch) -> np.ndarray:
            out = request.infer({n: batch[n] for n in names}, share_inputs=True)
            return np.asarray(out[0]).copy()

        return run

    return {"dynamic": compile_for([-1, -1]), "static": _static(lambda b, n: compile_for([b, n]))}


def onnx_runners(folder: Path) -> dict[str, Run]:
    import onnxruntime as ort

    from squeezer.backends.device import compute_threads
    from squeezer.backends.onnx_backend import MODEL_FILE, session_options

    def session(rows: int | None, length: int | None) -> Run:
        opts = session_options(compute_threads())
        if rows is not None and length is not None:
            opts.add_free_dimension_override_by_name("batch", rows)
            opts.add_free_dimension_override_by_name("sequence", length)
        sess = ort.InferenceSession(
            str(folder / MODEL_FILE), opts, providers=["CPUExecutionProvider"]
        )
        names = [i.name for i in sess.get_inputs()]

        def run(batch: Batch) -> np.ndarray:
            return np.asarray(sess.run(None, {n: batch[n] for n in names})[0])

        return run

    return {"dynamic": session(None, None), "static": _static(session)}


def _pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    pooled = (hidden * m).sum(1) / m.sum(1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def measure(
    runners: dict[str, Run], batches: list[Batch], singles: list[Batch], reps: int
) -> dict[str, Any]:
    for run in runners.values():  # warm: every shape compiled before the clock starts
        for b in batches + singles:
            run(b)
    pooled = {
        k: np.concatenate([_pooled(r(b), b["attention_mask"]) for b in batches])
        for k, r in runners.items()
    }
    rows = sum(b["input_ids"].shape[0] for b in batches)
    times: dict[str, dict[str, list[float]]] = {k: {"batch": [], "single": []} for k in runners}
    for _ in range(reps):
        for name, run in runners.items():
            t0 = time.perf_counter()
            for b in batches:
                run(b)
            times[name]["batch"].append(rows / (time.perf_counter() - t0))
            for b in singles:
                t0 = time.perf_counter()
                run(b)
                times[name]["single"].append((time.perf_counter() - t0) * 1000)
    result: dict[str, Any] = {
        name: {
            "sentences_per_s": round(statistics.median(t["batch"]), 1),
            "single_p50_ms": round(statistics.median(t["single"]), 3),
        }
        for name, t in times.items()
    }
    dyn, sta = result["dynamic"], result["static"]
    result["static_vs_dynamic_throughput"] = round(
        sta["sentences_per_s"] / dyn["sentences_per_s"], 3
    )
    result["static_vs_dynamic_single_p50"] = round(sta["single_p50_ms"] / dyn["single_p50_ms"], 3)
    result["min_cosine_static_vs_dynamic"] = round(
        float((pooled["dynamic"] * pooled["static"]).sum(1).min()), 6
    )
    return result


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(names))
    ax.bar(
        x - 0.2,
        [results[n]["static_vs_dynamic_throughput"] for n in names],
        0.4,
        label="batch 32 throughput",
    )
    ax.bar(
        x + 0.2,
        [1 / results[n]["static_vs_dynamic_single_p50"] for n in names],
        0.4,
        label="one sentence speed",
    )
    ax.axhline(1.0, color="gray", linestyle="--")
    ax.set_xticks(x, names)
    ax.set_ylabel("static buckets / dynamic shapes")
    ax.set_title("length buckets vs dynamic shapes (all-MiniLM-L6-v2)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    from squeezer.backends.device import compute_threads
    from squeezer.models import read_folder
    from squeezer.models.manifest import BF16, current_hardware
    from squeezer.optimize.build_onnx import build_fp32 as onnx_fp32
    from squeezer.optimize.build_openvino import build_fp32 as openvino_fp32
    from squeezer.optimize.candidate import BuildContext

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE.parent / "docs" / "bench" / "static_shapes")
    p.add_argument("--sentences", type=int, default=512)
    p.add_argument("--singles", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    src = _corpus.default_model_dir()
    texts = _corpus.sentences(a.sentences + a.singles)
    batches = _batches(src, texts[: a.sentences], BATCH)
    singles = _batches(src, texts[a.sentences :], 1)
    work = Path(tempfile.mkdtemp(prefix="static-shapes-"))
    results: dict[str, Any] = {}
    try:
        folders = {}
        for name, build in (("openvino", openvino_fp32), ("onnxruntime", onnx_fp32)):
            folders[name] = work / name
            shutil.copytree(src, folders[name])
            build(BuildContext(read_folder(src), folders[name], cache=work / "cache"))
        suites: dict[str, Callable[[], dict[str, Run]]] = {
            "openvino fp32": lambda: openvino_runners(folders["openvino"], "f32"),
            "onnxruntime fp32": lambda: onnx_runners(folders["onnxruntime"]),
        }
        hw = current_hardware(compute_threads())
        if not hw.unmet((BF16,)):
            suites["openvino bf16"] = lambda: openvino_runners(folders["openvino"], "bf16")
        for name, make in suites.items():
            print(f"{name}: measuring", flush=True)
            results[name] = measure(make(), batches, singles, a.reps)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "command": "python benchmarks/static_shapes.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": hw.cpu, "threads": hw.cores, "flags": list(hw.flags)},
        "buckets": BUCKETS,
        "batch": BATCH,
        "results": results,
    }
    (a.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, a.out / "static_shapes.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

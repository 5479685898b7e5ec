"""In-process measurements, each run by the harness in a subprocess of its own.

    python3 benchmarks/gpu/_jobs.py JOB --model DIR --device cuda --out result.json [...]

A subprocess per job because each loads torch and a model on the GPU: its memory is
given back when it exits, a crash (out of memory, a CUDA error) costs that job alone,
and no job's threads or allocations compete with the servers measured afterwards.

Jobs: ``pipeline`` (HF ``pipeline("feature-extraction")``, one request at a time, fp32),
``st`` (sentence-transformers ``encode`` over the corpus), ``forward`` (squeezer's own
forward pass on pre-tokenized, length-sorted batches: the ceiling the served numbers are
read against) and ``accuracy`` (squeezer's torch backend per dtype against fp32
sentence-transformers on held-out sentences; also saves that reference for the HTTP
check). squeezer's numbers go through the code the server runs: ``load_backend`` and
the optimizer's ``Probe`` (the same tokenizer, padding and pooling head as served
requests).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from squeezer.backends import Backend
    from squeezer.optimize.accuracy import Probe

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

import _corpus  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def _repeat(step: Callable[[], int], seconds: float) -> tuple[int, float, list[float]]:
    """Call ``step`` (returns sentences done) until ``seconds`` pass, at least once."""
    done = 0
    times: list[float] = []
    t_start = time.perf_counter()
    while not times or time.perf_counter() - t_start < seconds:
        t0 = time.perf_counter()
        done += step()
        times.append(time.perf_counter() - t0)
    return done, time.perf_counter() - t_start, times


def pipeline(a: argparse.Namespace) -> dict[str, Any]:
    """What a user's first server does per request: the HF pipeline, fp32, one text."""
    import torch
    import transformers

    extract = transformers.pipeline(
        "feature-extraction", model=str(a.model), device=torch.device(a.device), dtype=torch.float32
    )
    texts = _corpus.all_sentences()
    cursor = itertools.count()

    def one() -> int:
        tokens = np.asarray(extract(texts[next(cursor) % len(texts)])[0], dtype=np.float32)
        tokens.mean(axis=0)  # the sentence vector, as a mean-pooling server would send
        return 1

    for _ in range(5):
        one()
    done, secs, times = _repeat(one, a.seconds)
    result = {"sentences_per_s": done / secs, "sentences": done, "dtype": "float32"}
    return result | _percentiles(times)


def st(a: argparse.Namespace) -> dict[str, Any]:
    """sentence-transformers ``encode`` over the whole corpus, per (dtype, batch size)."""
    import torch
    from sentence_transformers import SentenceTransformer

    texts = _corpus.all_sentences()[: a.st_sentences]
    out: dict[str, Any] = {}
    for run in a.st_runs.split(","):
        dtype, _, batch = run.partition(":")
        model = SentenceTransformer(str(a.model), device=a.device).to(getattr(torch, dtype))

        def encode(model: Any = model, batch: int = int(batch)) -> int:
            model.encode(texts, batch_size=batch, convert_to_numpy=True)
            _sync(a.device)
            return len(texts)

        encode()
        done, secs, _ = _repeat(encode, a.seconds)
        out[f"{dtype} bs{batch}"] = {
            "sentences_per_s": done / secs,
            "sentences": done,
            "dtype": dtype,
            "batch_size": int(batch),
        }
        del model
    return out


def _squeezer(
    a: argparse.Namespace, texts: list[str], dtype: str | None = None
) -> tuple[Backend, Probe, str]:
    """squeezer's backend, a probe over ``texts`` and the dtype, as the server loads them."""
    from squeezer.backends.device import resolve_device, resolve_dtype
    from squeezer.backends.registry import load_backend
    from squeezer.models import read_folder
    from squeezer.optimize.accuracy import Probe
    from squeezer.types import Task

    device = resolve_device(a.device)
    dtype = resolve_dtype(dtype or a.dtype, device)
    folder = read_folder(a.model.resolve())
    probe = Probe(folder, Task.EMBED, texts)
    return load_backend("torch", folder.path, device=device, dtype=dtype), probe, dtype


def forward(a: argparse.Namespace) -> dict[str, Any]:
    """squeezer's forward pass alone: what the GPU path could reach with no HTTP at all.

    The corpus is tiled to ``--forward-sentences`` and sorted by length, as a server's
    batcher sees a long queue: batches of near-equal length (little padding). Per batch,
    ``forward`` is ``backend.forward`` (copies in, compute, hidden states back);
    ``batch`` adds padding the inputs (``collate``) and pooling: the compute thread's work.
    """
    corpus = _corpus.all_sentences()
    texts = [corpus[i % len(corpus)] for i in range(a.forward_sentences)]
    backend, probe, dtype = _squeezer(a, texts)
    out: dict[str, Any] = {}
    for size in (int(b) for b in a.batches.split(",")):
        order = probe.order
        batches = [
            [probe.items[i] for i in order[s : s + size]] for s in range(0, len(order), size)
        ]
        real = sum(it.num_tokens for b in batches for it in b)
        padded = sum(len(b) * max(it.num_tokens for it in b) for b in batches)
        spent = {"collate": 0.0, "forward": 0.0, "pool": 0.0}

        def one_pass(batches: list[Any] = batches, spent: dict[str, float] = spent) -> int:
            for items in batches:
                t0 = time.perf_counter()
                arrays = probe.runner.collate(items)
                t1 = time.perf_counter()
                outputs = backend.forward(arrays, probe.runner.outputs(items))
                t2 = time.perf_counter()
                probe.runner.split(outputs, items)
                t3 = time.perf_counter()
                spent["collate"] += t1 - t0
                spent["forward"] += t2 - t1
                spent["pool"] += t3 - t2
            return len(texts)

        one_pass()  # warm-up: every shape once (kernel choice, allocator)
        spent.update(collate=0.0, forward=0.0, pool=0.0)
        done, secs, _ = _repeat(one_pass, a.seconds)
        calls = len(batches) * done // len(texts)
        out[str(size)] = {
            "sentences_per_s": done / spent["forward"],
            "batch_sentences_per_s": done / secs,
            "ms_per_batch": {k: 1000 * v / calls for k, v in spent.items()},
            "padding_efficiency": real / padded,
            "batches_per_pass": len(batches),
            "sentences": done,
            "dtype": dtype,
        }
    backend.close()
    return out


def accuracy(a: argparse.Namespace) -> dict[str, Any]:
    """Each dtype's pooled, normalized vectors against fp32 sentence-transformers.

    Held-out sentences: the corpus' report split, which nothing in squeezer tunes on.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    from squeezer.optimize.accuracy import compare
    from squeezer.optimize.corpus import split_texts
    from squeezer.types import Task

    texts = split_texts(_corpus.all_sentences()).report[: a.texts]
    model = SentenceTransformer(str(a.model), device=a.device).to(torch.float32)
    reference = model.encode(texts, batch_size=64, normalize_embeddings=True)
    np.savez(a.reference, texts=np.asarray(texts), vectors=reference.astype(np.float32))
    out: dict[str, Any] = {"texts": len(texts)}
    half = model.to(torch.float16).encode(texts, batch_size=64, normalize_embeddings=True)
    out["sentence-transformers float16"] = compare(
        Task.EMBED, reference, np.asarray(half, dtype=np.float32)
    ).as_dict()
    del model
    for dtype in a.dtypes.split(","):
        backend, probe, dtype = _squeezer(a, texts, dtype)
        vectors = probe.run(backend)
        backend.close()
        out[f"squeezer {dtype}"] = compare(Task.EMBED, reference, vectors).as_dict()
    return out


JOBS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "pipeline": pipeline,
    "st": st,
    "forward": forward,
    "accuracy": accuracy,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("job", choices=sorted(JOBS))
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="auto", help="squeezer's dtype (forward)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=5.0, help="timed loop per measurement")
    p.add_argument("--st-runs", default="float16:256", help="DTYPE:BATCH,... (st)")
    p.add_argument("--st-sentences", type=int, default=None, help="corpus prefix (st)")
    p.add_argument("--batches", default="256,1024", help="batch sizes (forward)")
    p.add_argument("--forward-sentences", type=int, default=8192)
    p.add_argument("--texts", type=int, default=256, help="held-out sentences (accuracy)")
    p.add_argument("--dtypes", default="float32,float16,bfloat16", help="(accuracy)")
    p.add_argument("--reference", type=Path, help="where accuracy saves fp32 ST vectors")
    a = p.parse_args(argv)
    if a.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"--device {a.device}: torch sees no CUDA device")
    if a.device == "cuda":
        a.device = "cuda:0"
    result = JOBS[a.job](a)
    a.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where one request's time goes on an optimized artifact: tokenization, forward, pooling.

    python benchmarks/latency_breakdown.py optimized/minilm-latency

Compare the printed in-process figures with the same short sentence over HTTP
(``optimize_http.py``) to read the HTTP stack's share.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import _corpus

from squeezer.backends import load_backend
from squeezer.backends.device import configure_threads
from squeezer.models import read_folder
from squeezer.models.manifest import read_manifest
from squeezer.optimize.accuracy import Probe
from squeezer.types import Task


def p50_ms(fn: object, runs: int = 300) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> int:
    artifact = Path(sys.argv[1])
    manifest = read_manifest(artifact)
    runtime = manifest.runtime if manifest else "torch"
    configure_threads()
    texts = _corpus.sentences(512)
    probe = Probe(read_folder(artifact), Task.EMBED, texts[:32])
    backend = load_backend(runtime, artifact, device="cpu", dtype="float32")
    t = time.perf_counter()
    for s in texts:
        probe.tokenize([s])
    print(
        f"tokenize, one sentence at a time: {(time.perf_counter() - t) / len(texts) * 1e6:.1f} us"
    )
    short = sorted(texts, key=len)[len(texts) // 10]
    items = probe.tokenize([short])
    arrays = probe.runner.collate(items)
    for _ in range(20):
        backend.forward(arrays, ("last_hidden_state",))
    forward = p50_ms(lambda: backend.forward(arrays, ("last_hidden_state",)))
    whole = p50_ms(lambda: probe.forward(backend, probe.tokenize([short])))
    print(f"{short!r} ({items[0].num_tokens} tokens), {runtime}:")
    print(f"  forward only p50 {forward:.2f} ms; tokenize + forward + pool p50 {whole:.2f} ms")
    ordered = sorted(texts, key=len)
    t = time.perf_counter()
    batches = [probe.tokenize(ordered[i : i + 32]) for i in range(0, len(ordered), 32)]
    tokenize_s = time.perf_counter() - t
    t = time.perf_counter()
    for batch in batches:
        probe.forward(backend, batch)
    forward_s = time.perf_counter() - t
    share = 100 * tokenize_s / (tokenize_s + forward_s)
    print(f"batches of 32 (length-sorted): tokenization {share:.1f} % of the time,")
    print(f"  {len(texts) / forward_s:.1f} sentences/s for forward + pooling alone")
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

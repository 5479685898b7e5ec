"""Prometheus metrics, one ``CollectorRegistry`` per app (no process-global state).

The engine reports through the ``EngineObserver`` protocol, which this class
implements; the HTTP middleware records requests by route template and status.
prometheus-client's metric objects are thread-safe, so the compute thread may call in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from squeezer.backends.device import DeviceMemory
from squeezer.errors import SqueezerError
from squeezer.server.observe import Figures

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
#: vLLM's and TGI's ranges: a GPU's first token in milliseconds, a CPU's in seconds.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5,
                 7.5, 10, 20, 40, 80)  # fmt: skip
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1,
                2.5)  # fmt: skip
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 60, 120)


class Metrics:
    """All of squeezer's metrics for one app instance."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "squeezer_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "squeezer_request_duration_seconds",
            "HTTP request latency, body read to response sent",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "squeezer_queue_wait_seconds",
            "Time an input waited in its model's queue before its batch ran",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "squeezer_batch_size",
            "Inputs per forward pass",
            ["model"],
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "squeezer_batch_tokens",
            "Padded tokens per forward pass",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_compute = Histogram(
            "squeezer_batch_compute_seconds",
            "Collate + forward + split time per batch",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "squeezer_tokens", "Real (unpadded) tokens processed", ["model"], registry=r
        )
        self.queue_depth = Gauge(
            "squeezer_queue_depth", "Inputs waiting in each model's queue", ["model"], registry=r
        )
        self.generation_running = Gauge(
            "squeezer_generation_running",
            "Sequences decoding (holding a KV-cache slot)",
            ["model"],
            registry=r,
        )
        self.generation_waiting = Gauge(
            "squeezer_generation_waiting",
            "Generation requests waiting for a slot",
            ["model"],
            registry=r,
        )
        self.generation_step = Histogram(
            "squeezer_generation_step_seconds",
            "Time of one continuous-batching step (admit, prefill, decode all running)",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.generated_tokens = Counter(
            "squeezer_generated_tokens", "Tokens sampled", ["model"], registry=r
        )
        self.prompt_tokens = Counter(
            "squeezer_generation_prompt_tokens",
            "Prompt tokens admitted to generation",
            ["model"],
            registry=r,
        )
        self.prompt_tokens_cached = Counter(
            "squeezer_generation_prompt_tokens_cached",
            "Prompt tokens found in the KV cache (prefix caching), not computed",
            ["model"],
            registry=r,
        )
        #: What backends' own totals were at the last scrape, by model and counters.
        self._seen_totals: dict[tuple[str, str], tuple[int, ...]] = {}
        # vLLM's spec_decode counters: acceptance = accepted / draft tokens.
        self.spec_drafts = Counter(
            "squeezer_spec_decode_num_drafts",
            "Verify steps of speculating sequences (one per sequence per step)",
            ["model"],
            registry=r,
        )
        self.spec_draft_tokens = Counter(
            "squeezer_spec_decode_num_draft_tokens", "Tokens drafted", ["model"], registry=r
        )
        self.spec_accepted_tokens = Counter(
            "squeezer_spec_decode_num_accepted_tokens",
            "Drafted tokens the target model accepted",
            ["model"],
            registry=r,
        )
        self.kv_blocks = Gauge(
            "squeezer_kv_cache_blocks", "Blocks of a paged KV cache's pool", ["model"], registry=r
        )
        self.kv_blocks_used = Gauge(
            "squeezer_kv_cache_blocks_in_use",
            "Blocks of a paged KV cache held by running sequences",
            ["model"],
            registry=r,
        )
        self.gpu_allocated = Gauge(
            "squeezer_gpu_memory_allocated_bytes",
            "GPU memory held by live tensors",
            ["device"],
            registry=r,
        )
        self.gpu_reserved = Gauge(
            "squeezer_gpu_memory_reserved_bytes",
            "GPU memory held by torch's caching allocator (live tensors and cached blocks)",
            ["device"],
            registry=r,
        )
        self.gpu_limit = Gauge(
            "squeezer_gpu_memory_limit_bytes",
            "GPU memory this process may take (total x --gpu-memory-fraction)",
            ["device"],
            registry=r,
        )
        self.golden_loss = Gauge(
            "squeezer_golden_loss",
            "The golden-output gate's last check of a loaded version: its loss per task "
            "against the lockfile (squeezer pin), next to the tolerance it passed or failed",
            ["model", "version", "task"],
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "squeezer_time_to_first_token_seconds",
            "Generation: request received to its first token sent",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "squeezer_inter_token_latency_seconds",
            "Generation: time between one token of a stream and the next",
            ["model"],
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.request_e2e = Histogram(
            "squeezer_request_e2e_seconds",
            "Requests that ran a model: received to last byte sent",
            ["model", "route"],
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "squeezer_http_requests_in_flight", "HTTP requests being served", registry=r
        )
        self.api_worker_restarts = Counter(
            "squeezer_api_worker_restarts",
            "API processes (--api-workers) that died and were replaced",
            registry=r,
        )

    # EngineObserver: the engine names a model's load ``name:version[#load]``; the
    # ``model`` label is its name, so that series survive a swap.

    def on_batch(
        self, model: str, size: int, padded_tokens: int, real_tokens: int, compute_s: float
    ) -> None:
        model = _name(model)
        self.batch_size.labels(model).observe(size)
        self.batch_tokens.labels(model).observe(padded_tokens)
        self.batch_compute.labels(model).observe(compute_s)
        self.tokens.labels(model).inc(real_tokens)

    def on_queue_wait(self, model: str, seconds: float) -> None:
        self.queue_wait.labels(_name(model)).observe(seconds)

    def on_queue_depth(self, model: str, depth: int) -> None:
        self.queue_depth.labels(_name(model)).set(depth)

    def on_generation_step(self, model: str, new_tokens: int, seconds: float) -> None:
        self.generation_step.labels(_name(model)).observe(seconds)
        self.generated_tokens.labels(_name(model)).inc(new_tokens)

    # HTTP -----------------------------------------------------------------------

    def request_started(self) -> None:
        self.in_flight.inc()

    def request_finished(self, f: Figures) -> None:
        self.in_flight.dec()
        self.requests.labels(f.route, str(f.status)).inc()
        self.request_latency.labels(f.route).observe(f.seconds)
        if f.model is None:
            return
        self.request_e2e.labels(f.model, f.route).observe(f.seconds)
        if f.first_token_s is not None:
            self.time_to_first_token.labels(f.model).observe(f.first_token_s)
        if f.token_gaps:
            itl = self.inter_token_latency.labels(f.model)
            for gap in f.token_gaps:
                itl.observe(gap)

    def set_generation_load(self, model: str, running: int, waiting: int) -> None:
        """Read at scrape time, so the gauges are exact whenever they are looked at."""
        self.generation_running.labels(model).set(running)
        self.generation_waiting.labels(model).set(waiting)

    def set_prefix_cache(self, model: str, prompt: int, cached: int) -> None:
        """Read at scrape time from the backend's own counts."""
        counters = (self.prompt_tokens, self.prompt_tokens_cached)
        self._catch_up(model, "prefix", counters, (prompt, cached))

    def set_speculation(self, model: str, drafts: int, drafted: int, accepted: int) -> None:
        """Read at scrape time from the backend's counts, as ``set_prefix_cache``."""
        counters = (self.spec_drafts, self.spec_draft_tokens, self.spec_accepted_tokens)
        self._catch_up(model, "speculation", counters, (drafts, drafted, accepted))

    def _catch_up(
        self, model: str, what: str, counters: tuple[Counter, ...], totals: tuple[int, ...]
    ) -> None:
        """Advance ``counters`` by what the backend's ``totals`` grew since the last
        scrape (a backend counts since its start; a counter only goes up)."""
        key = (model, what)
        before = self._seen_totals.get(key, (0,) * len(totals))
        for counter, new, old in zip(counters, totals, before, strict=True):
            counter.labels(model).inc(max(new - old, 0))
        self._seen_totals[key] = totals

    def set_kv_blocks(self, model: str, total: int, used: int) -> None:
        self.kv_blocks.labels(model).set(total)
        self.kv_blocks_used.labels(model).set(used)

    def set_golden(self, model: str, version: str, task: str, loss: float) -> None:
        self.golden_loss.labels(model, version, task).set(loss)

    def set_gpu_memory(self, memory: Iterable[DeviceMemory]) -> None:
        """Read at scrape time from torch's allocator."""
        for m in memory:
            self.gpu_allocated.labels(m.device).set(m.allocated)
            self.gpu_reserved.labels(m.device).set(m.reserved)
            self.gpu_limit.labels(m.device).set(m.limit)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RemoteMetrics(Metrics):
    """An API process's metrics (``--api-workers``): its HTTP observations go to the
    engine process, whose one registry ``/metrics`` renders for every process."""

    def __init__(self, send: Callable[..., None]) -> None:
        super().__init__()
        self._send = send

    def request_started(self) -> None:
        self._note("http_start")

    def request_finished(self, f: Figures) -> None:
        self._note("http_end", f)

    def _note(self, *args: object) -> None:
        with contextlib.suppress(SqueezerError):  # the engine is gone: nobody to count for
            self._send(*args)


def _name(engine_key: str) -> str:
    """A model's name from the engine's key for one of its loads (names hold no ``:``)."""
    return engine_key.partition(":")[0]

"""The contract fuzz for minutes instead of seconds, against a real server.

    python benchmarks/fuzz.py [--minutes 5] [--max-examples 100] [--url URL]
        [--max-total-tokens 128] [--seed N] [--out bench-results/fuzz]

The suite's fuzz (tests/integration/test_contract_fuzz.py: schemathesis on the
server's own /openapi.json, checks ``not_a_server_error`` and
``status_code_conformance``, the same hooks and generation clamps), run by
schemathesis' engine as ``st run`` runs it: the suite's phases (explicit examples,
coverage, fuzzing) with --max-examples fuzzed cases per operation, once; with
--minutes, the engine cycles through them until the time is spent, sharing it among
the operations (``st run --max-time``). One difference: a generation whose size is left
out gets the suite's ceiling too (a real model would run to its slot's end, seconds a
case on CPU; the suite's tiny model covers that default).

Without --url it starts ``squeezer serve`` on a free port with the packaged default
models (all-MiniLM-L6-v2, and SmolLM2-135M-Instruct when installed) and a short
--max-total-tokens, waits for /ready, fuzzes it, checks /health and stops it with
SIGTERM. --url fuzzes a running server instead (e.g. ``make serve``).

Writes OUT/summary.json (per operation: cases, statuses, failing cases by check; each
distinct failure with a curl line to reproduce it), OUT/fuzz.png (cases and failures
per operation) and OUT/server.log, and prints the table. Exits 1 when anything failed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the suite's fuzz policy, shared: tests.integration...

import schemathesis  # noqa: E402
from peer_recipes import Recipe  # noqa: E402
from peers import console, started  # noqa: E402
from rich.table import Table  # noqa: E402
from schemathesis.config import HealthCheck  # noqa: E402
from tests.integration.test_contract_fuzz import (  # noqa: E402
    CHECKS,
    HF_PATHS,
    MAX_NEW_TOKENS,
    install_hooks,
    limit_generation,
)

from squeezer.server.routes.tgi import is_generation_body  # noqa: E402

CHECK_NAMES = [check.__name__ for check in CHECKS]
#: Fuzzed cases per operation (the examples and coverage phases add their own).
DEFAULT_EXAMPLES = 100


@dataclass
class Operation:
    """What one operation got and how it answered, summed over phases and cycles."""

    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)


@dataclass
class Results:
    operations: dict[str, Operation] = field(default_factory=dict)
    #: One entry per distinct (operation, check, status, title).
    failures: dict[tuple[str, str, int | None, str], dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False

    def add(self, recorder: Any) -> None:
        op = self.operations.setdefault(recorder.label, Operation())
        for case_id, interaction in recorder.interactions.items():
            op.cases += 1
            response = interaction.response
            if response is not None:
                op.statuses[response.status_code] += 1
            failed = {
                node.name: node
                for node in recorder.checks.get(case_id, [])
                if node.failure_info is not None
            }
            for name, node in failed.items():
                op.failures[name] += 1
                failure = node.failure_info.failure
                status = response.status_code if response is not None else None
                key = (recorder.label, name, status, failure.title)
                entry = self.failures.setdefault(
                    key,
                    {
                        "operation": recorder.label,
                        "check": name,
                        "status": status,
                        "title": failure.title,
                        "message": failure.message,
                        "response": _excerpt(response),
                        "curl": node.failure_info.code_sample,
                        "cases": 0,
                    },
                )
                entry["cases"] += 1


def _excerpt(response: Any, limit: int = 500) -> str | None:
    if response is None:
        return None
    text = response.content.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "..."


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def run_engine(
    url: str, model_names: list[str], args: argparse.Namespace, results: Results
) -> None:
    """schemathesis' engine over every operation; its scenarios go into ``results``."""
    config = schemathesis.Config()
    config.output.sanitization.update(enabled=False)  # it hides *_tokens fields
    config.update(
        seed=args.seed,
        max_failures=None,
        max_time=None if args.minutes is None else max(1, round(args.minutes * 60)),
        suppress_health_check=[HealthCheck.all],
    )
    project = config.projects.override
    project.checks.update(included_check_names=CHECK_NAMES)
    project.generation.update(max_examples=args.max_examples)
    project.update(continue_on_failure=True, request_timeout=300)
    # The suite's phases: no stateful one (the spec has no links).
    project.phases.update(phases=["examples", "coverage", "fuzzing"])
    schema = install_hooks(
        schemathesis.openapi.from_url(f"{url}/openapi.json", config=config), model_names
    )
    for event in schemathesis.engine.from_schema(schema).execute():
        recorder = getattr(event, "recorder", None)
        if recorder is not None:
            results.add(recorder)
        elif type(event).__name__ == "Interrupted":
            results.interrupted = True
        elif type(event).__name__ in ("NonFatalError", "FatalError"):
            error = getattr(event, "value", None) or getattr(event, "exception", None)
            label = getattr(event, "label", "")
            results.errors.append(f"{label}: {type(error).__name__}: {error}")


def bound_generation(case: Any, generators: set[str], root_generates: bool) -> None:
    """Give a generation whose size is absent (or null) the suite's ceiling.

    A real model runs to its slot's end without one (seconds per request on CPU, and
    hundreds of such coverage cases), which the in-process test can afford on a tiny
    model and this run cannot. Only where the size field exists: OpenAI's completions,
    TGI's routes, and HF Inference API bodies that reach a generation model."""
    body = case.body
    if not isinstance(body, dict):
        return
    path = case.operation.path
    if path.endswith("/completions"):
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            case.body = {**body, "max_tokens": MAX_NEW_TOKENS}
        return
    name = (case.path_parameters or {}).get("name")
    if not (
        path in ("/generate", "/generate_stream")
        or (path in HF_PATHS and name in generators)
        or (path == "/" and (root_generates or is_generation_body(body)))
    ):
        return
    params = body.get("parameters")
    params = {} if params is None else params
    if isinstance(params, dict) and params.get("max_new_tokens") is None:
        case.body = {**body, "parameters": {**params, "max_new_tokens": MAX_NEW_TOKENS}}


def install_call_hook(generators: set[str], root_generates: bool) -> None:
    """Every case's generation clamped and bounded as it is sent, whatever phase made
    it (a global hook: schemathesis has no per-schema ``before_call``)."""

    def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
        case.body = limit_generation(case.body)
        bound_generation(case, generators, root_generates)

    schemathesis.hooks.unregister_all()
    schemathesis.hook(before_call)


def fuzz(url: str, args: argparse.Namespace) -> tuple[Results, float]:
    models = _get_json(f"{url}/v1/models")["data"]
    model_names = [m["id"] for m in models]
    generators = {m["id"] for m in models if "generate" in m["tasks"]}
    install_call_hook(generators, root_generates=len(generators) == len(models))
    console.print(f"fuzzing {url} (models: {', '.join(model_names)})")
    results = Results()
    t0 = time.monotonic()
    run_engine(url, model_names, args, results)
    return results, time.monotonic() - t0


def summarize(
    results: Results, url: str, seconds: float, args: argparse.Namespace, server: dict[str, Any]
) -> dict[str, Any]:
    operations = []
    for label, op in sorted(results.operations.items(), key=lambda kv: kv[0].split(" ", 1)[::-1]):
        method, route = label.split(" ", 1)
        operations.append(
            {
                "route": route,
                "method": method,
                "cases": op.cases,
                "statuses": {str(s): n for s, n in sorted(op.statuses.items())},
                "failures": {name: op.failures.get(name, 0) for name in CHECK_NAMES},
            }
        )
    return {
        "url": url,
        "seconds": round(seconds, 1),
        "interrupted": results.interrupted,
        "max_examples": args.max_examples,
        "minutes": args.minutes,
        "seed": args.seed,
        "checks": CHECK_NAMES,
        "schemathesis": schemathesis.__version__,
        "server": server,
        "cases": sum(o["cases"] for o in operations),
        "failing_cases": sum(sum(o["failures"].values()) for o in operations),
        "operations": operations,
        "failures": sorted(
            results.failures.values(), key=lambda f: (f["operation"], f["check"], f["status"] or 0)
        ),
        "errors": results.errors,
    }


def print_table(summary: dict[str, Any]) -> None:
    table = Table(title=f"contract fuzz of {summary['url']}: {summary['seconds']:.0f} s")
    table.add_column("route")
    table.add_column("method")
    table.add_column("cases", justify="right")
    table.add_column("2xx / 4xx / 5xx", justify="right")
    for name in CHECK_NAMES:
        table.add_column(name, justify="right")
    for op in summary["operations"]:
        by_class = Counter(int(s) // 100 for s in op["statuses"] for _ in range(op["statuses"][s]))
        cells = [str(op["failures"][n]) if op["failures"][n] else "-" for n in CHECK_NAMES]
        style = "red" if any(op["failures"].values()) else None
        table.add_row(
            op["route"],
            op["method"],
            str(op["cases"]),
            f"{by_class[2]} / {by_class[4]} / {by_class[5]}",
            *cells,
            style=style,
        )
    console.print(table)
    for f in summary["failures"]:
        console.print(
            f"[red]{f['operation']}[/red] {f['check']}: {f['title']} "
            f"(status {f['status']}, {f['cases']} case(s))\n  {f['curl']}\n  -> {f['response']}"
        )
    for error in summary["errors"]:
        console.print(f"[yellow]error[/yellow] {error}")
    verdict = "no failures" if not summary["failures"] else f"{len(summary['failures'])} failures"
    console.print(f"{summary['cases']} cases, {verdict}")


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ops = summary["operations"]
    labels = [f"{o['method']} {o['route']}" for o in ops]
    y = range(len(ops))
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 0.3 * len(ops) + 1.5), sharey=True, width_ratios=[3, 2]
    )
    left.barh(y, [o["cases"] for o in ops], color="tab:blue")
    left.set_xscale("log")
    left.set_xlabel("cases (log)")
    left.set_yticks(list(y), labels, fontsize=7)
    left.invert_yaxis()
    start = [0] * len(ops)
    for name, color in zip(CHECK_NAMES, ("tab:red", "tab:orange"), strict=False):
        counts = [o["failures"][name] for o in ops]
        right.barh(y, counts, left=start, color=color, label=name)
        start = [a + b for a, b in zip(start, counts, strict=True)]
    right.set_xlim(0, max(1, *start) * 1.1)
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("failing cases")
    right.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"contract fuzz: {summary['cases']} cases in {summary['seconds']:.0f} s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="a running squeezer (default: start one on the packaged models)")
    p.add_argument("--minutes", type=float, help="keep fuzzing for this long (the engine cycles)")
    p.add_argument(
        "--max-examples",
        type=int,
        default=DEFAULT_EXAMPLES,
        help=f"fuzzed cases per operation (per cycle) [default: {DEFAULT_EXAMPLES}]",
    )
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument(
        "--max-total-tokens",
        type=int,
        default=128,
        help="the started server's generation slot (without --url) [default: 128]",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "fuzz")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    # `timeout` and CI stop with SIGTERM: end as on Ctrl-C (the engine reports what it
    # did, the started server is stopped), not mid-request with the server left running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    if args.url:
        url = args.url.rstrip("/")
        results, seconds = fuzz(url, args)
        server = _get_json(f"{url}/info")
    else:
        recipe = Recipe(
            name="squeezer-defaults",
            kind="generation",
            start="{python} -m squeezer serve --port {port} "
            f"--max-total-tokens {args.max_total_tokens}",
            route="/",
            ready_path="/ready",
        )
        log = args.out / "server.log"
        log.unlink(missing_ok=True)
        with (
            tempfile.TemporaryDirectory() as work,
            started(recipe, Path(sys.executable), log, Path(work)) as url,
        ):
            results, seconds = fuzz(url, args)
            server = _get_json(f"{url}/info")
            alive = urllib.request.urlopen(f"{url}/health", timeout=30).status
            if alive != 200:
                results.errors.append(f"/health answered {alive} after the fuzz")
    info = {
        "version": server.get("version"),
        "models": [
            {k: m.get(k) for k in ("name", "tasks", "backend", "device", "dtype")}
            for m in server.get("models", [])
        ],
    }
    summary = summarize(results, url, seconds, args, info)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, args.out / "fuzz.png")
    print_table(summary)
    console.print(f"wrote {args.out}/summary.json and fuzz.png")
    return 1 if summary["failures"] or summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

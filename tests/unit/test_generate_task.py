"""The generate task on a tiny Llama with a trained BPE tokenizer and chat template."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
import transformers

from squeezer.backends.sampling import SamplingParams
from squeezer.backends.torch_generation import TorchGenerationBackend
from squeezer.engine import DeviceExecutor
from squeezer.engine.generation import GenerationRequest, GenerationScheduler
from squeezer.errors import InvalidRequestError
from squeezer.models import read_folder
from squeezer.tasks.generate import Finish, GenerateRequest, GenerateTask, TextDelta, TextDone
from tests.tiny_models import build_chat_llama


@pytest.fixture(scope="module")
def chat_llama(tiny_llama: Path) -> Path:
    return tiny_llama


@pytest.fixture
async def scheduler(chat_llama: Path) -> AsyncIterator[GenerationScheduler]:
    backend = TorchGenerationBackend(chat_llama, max_slots=4, max_len=256)
    executor = DeviceExecutor("cpu")
    sched = GenerationScheduler(
        backend, wake=executor.wake, max_batch_total_tokens=4096, max_concurrent_requests=8
    )
    executor.add_source(sched)
    executor.start()
    yield sched
    executor.close()
    executor.join(10)


def test_chat_messages_render_with_the_models_template(chat_llama: Path) -> None:
    task = GenerateTask(read_folder(chat_llama))
    messages = [{"role": "user", "content": "How are functions defined?"}]
    hf = transformers.AutoTokenizer.from_pretrained(chat_llama)
    text = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    want = hf(text, add_special_tokens=False).input_ids
    assert task.prompt_ids(GenerateRequest(messages=messages)) == want
    assert task.eos_ids == {hf.eos_token_id}


def test_a_model_without_a_chat_template_refuses_messages(tmp_path: Path) -> None:
    task = GenerateTask(read_folder(build_chat_llama(tmp_path / "m", None)))
    with pytest.raises(InvalidRequestError, match="no chat template"):
        task.prompt_ids(GenerateRequest(messages=[{"role": "user", "content": "hi"}]))
    with pytest.raises(InvalidRequestError, match="required"):
        task.prompt_ids(GenerateRequest())


def test_stop_sequences_are_bounded_in_number_and_length(chat_llama: Path) -> None:
    """The stream scans the longest stop sequence at every token: a megabyte of stop
    string would cost that per token, so its length is a limit with a 422."""
    task = GenerateTask(read_folder(chat_llama))
    params = SamplingParams()
    ok = "x" * task.limits.max_stop_length
    assert task.plan(GenerateRequest(prompt="hi", stop=[ok]), params).prompt
    with pytest.raises(InvalidRequestError, match="at most 256 characters, got one of 257"):
        task.plan(GenerateRequest(prompt="hi", stop=["ab", ok + "y"]), params)
    with pytest.raises(InvalidRequestError, match="at most 4 stop sequences"):
        task.plan(GenerateRequest(prompt="hi", stop=["a"] * 5), params)


async def _run(
    task: GenerateTask, sched: GenerationScheduler, req: GenerateRequest
) -> tuple[str, TextDone]:
    prompt = task.prompt_ids(req)
    stream = sched.submit(
        GenerationRequest(
            prompt, req.max_new_tokens, eos_ids=task.eos_ids, ignore_eos=req.ignore_eos
        )
    )
    text, done = "", None
    async for event in task.text(stream, req, prompt):
        if isinstance(event, TextDelta):
            text += event.text
        else:
            done = event
    assert done is not None
    return text, done


async def test_greedy_text_equals_generate_then_a_stop_sequence_cuts_it(
    chat_llama: Path, scheduler: GenerationScheduler
) -> None:
    task = GenerateTask(read_folder(chat_llama))
    req = GenerateRequest(prompt="Functions are objects", max_new_tokens=24, ignore_eos=True)
    text, done = await _run(task, scheduler, req)
    model = transformers.AutoModelForCausalLM.from_pretrained(chat_llama).eval()
    ids = torch.tensor([task.prompt_ids(req)])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24
    )
    hf = transformers.AutoTokenizer.from_pretrained(chat_llama)
    assert text == hf.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert done.finish is Finish.LENGTH and done.completion_tokens == 24
    assert done.prompt_tokens == ids.shape[1]

    stop = text[len(text) // 3 : len(text) // 3 + 3]
    at = text.index(stop)
    cut, done = await _run(
        task,
        scheduler,
        GenerateRequest(
            prompt="Functions are objects", max_new_tokens=24, stop=[stop], ignore_eos=True
        ),
    )
    assert cut == text[:at] and done.finish is Finish.STOP_SEQUENCE and done.stop == stop
    assert done.completion_tokens < 24
    for _ in range(100):  # the engine's sequence was cancelled and freed
        if scheduler.load == (0, 0):
            break
        await asyncio.sleep(0.01)
    assert scheduler.load == (0, 0) and Finish.STOP_SEQUENCE.openai == "stop"

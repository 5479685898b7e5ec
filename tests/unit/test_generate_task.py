"""The generate task on a tiny Llama with a trained BPE tokenizer and chat template."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from squeezer.backends.torch_generation import TorchGenerationBackend
from squeezer.engine import DeviceExecutor
from squeezer.engine.generation import GenerationRequest, GenerationScheduler
from squeezer.errors import InvalidRequestError
from squeezer.models import read_folder
from squeezer.tasks.generate import Finish, GenerateRequest, GenerateTask, TextDelta, TextDone
from tests.tiny_models import corpus

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _tiny_chat_llama(path: Path, template: str | None) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus()[:300], trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    if template:
        fast.chat_template = template
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=None,
        bos_token_id=None,
    )
    transformers.LlamaForCausalLM(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_chat_llama(tmp_path_factory.mktemp("chat-llama"), TEMPLATE)


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
    task = GenerateTask(read_folder(_tiny_chat_llama(tmp_path / "m", None)))
    with pytest.raises(InvalidRequestError, match="no chat template"):
        task.prompt_ids(GenerateRequest(messages=[{"role": "user", "content": "hi"}]))
    with pytest.raises(InvalidRequestError, match="required"):
        task.prompt_ids(GenerateRequest())


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

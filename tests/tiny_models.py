"""Tiny random models built at test time: no download, seconds to build.

A WordPiece tokenizer is trained in-process on text that ships with Python
(``pydoc_data.topics``), and a few-layer BERT with random weights is saved next to it
with sentence-transformers' pooling files, exactly as a real model folder looks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import transformers
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import BertConfig, PreTrainedTokenizerFast

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def corpus(limit: int = 4000) -> list[str]:
    """English sentences from Python's bundled documentation text."""
    from pydoc_data.topics import topics

    text = " ".join(topics.values())
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text)]
    return [s for s in sentences if 20 <= len(s) <= 300 and s.isascii()][:limit]


def train_wordpiece(vocab_size: int = 600) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL)
    tok.train_from_iterator(corpus(), trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tok


def build_bert(
    path: Path,
    *,
    pooling: str = "mean",
    max_seq_length: int = 64,
    prompts: dict[str, str] | None = None,
    seed: int = 0,
    architecture: str = "BertModel",
    labels: list[str] | None = None,
    sentence_transformers: bool = True,
) -> Path:
    """Write a tiny BERT model folder to ``path`` and return it.

    ``architecture`` picks the head (``BertForSequenceClassification``,
    ``BertForTokenClassification``, ``BertForMaskedLM``, ``BertForQuestionAnswering``);
    ``labels`` names a classifier's outputs, in order.
    """
    path.mkdir(parents=True, exist_ok=True)
    tok = train_wordpiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],  # as BERT's
    )
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        architectures=[architecture],
    )
    if labels is not None:
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
    model = getattr(transformers, architecture)(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    if not sentence_transformers:
        return path
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 32,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_lasttoken": pooling == "last",
            }
        )
    )
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    if prompts:
        (path / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))
    return path


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


#: A Hermes-style template with tools, as Qwen's and Hermes' work: the tools listed in
#: the system turn, calls answered as <tool_call> JSON blocks, results as tool turns.
TOOLS_CHAT_TEMPLATE = (
    "{% if tools %}<|system|>You may call these functions:\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}"
    'Call one as <tool_call>\n{"name": ..., "arguments": ...}\n</tool_call></s>{% endif %}'
    "{% for m in messages %}"
    "{% if m['role'] == 'tool' %}<|user|><tool_response>{{ m['content'] }}</tool_response></s>"
    "{% elif m['role'] == 'assistant' and m.get('tool_calls') %}<|assistant|>"
    "{% for call in m['tool_calls'] %}<tool_call>\n"
    '{{ {"name": call["function"]["name"], "arguments": call["function"]["arguments"]} | tojson }}'
    "\n</tool_call>{% endfor %}</s>"
    "{% else %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_chat_llama(
    path: Path, template: str | None = CHAT_TEMPLATE, seed: int = 0, positions: int = 256
) -> Path:
    """A tiny Llama (grouped-query attention, as SmolLM2) with a byte-level BPE
    tokenizer trained here and a chat template; ``</s>`` is its EOS. ``seed``: its
    weights (the tokenizer is the same for every seed)."""
    from tokenizers import pre_tokenizers as pre

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=special, initial_alphabet=pre.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus()[:300], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    if template:
        fast.chat_template = template
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    config = tiny_llama_config(
        tok.get_vocab_size(),
        max_position_embeddings=positions,
        bos_token_id=None,
        architectures=["LlamaForCausalLM"],
    )
    transformers.LlamaForCausalLM(config).eval().save_pretrained(path)
    return path


def tiny_llama_config(vocab_size: int, **overrides: object) -> transformers.LlamaConfig:
    """Two layers with grouped-query attention (as SmolLM2) and no EOS id: the
    scheduler stops sequences, and `generate` must not stop them earlier."""
    settings: dict[str, object] = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "eos_token_id": None,
        **overrides,
    }
    return transformers.LlamaConfig(**settings)


#: The causal-LM families squeezer's generation backends serve (README).
CAUSAL_LM_KINDS = ("llama", "qwen2", "gpt2")


def tiny_causal_lm(kind: str, vocab_size: int) -> transformers.PreTrainedModel:
    """Two layers of ``kind`` (grouped-query attention for llama and qwen2), random
    weights, 128 positions."""
    if kind == "llama":
        return transformers.LlamaForCausalLM(tiny_llama_config(vocab_size))
    if kind == "qwen2":
        config = transformers.Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
        return transformers.Qwen2ForCausalLM(config)
    if kind == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=128
        )
        return transformers.GPT2LMHeadModel(config)
    raise ValueError(f"unknown causal LM kind {kind!r}")

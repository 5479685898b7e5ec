"""Streamed text: deltas add up to the full decode; stop strings across tokens."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from squeezer.tasks.text_stream import IncrementalDetokenizer, StopMatcher
from tests.tiny_models import corpus, train_wordpiece

TEXTS = ["héllo wörld, naïve café 🙂 déjà vu", "Functions are objects. ¿Qué?", *corpus()[:20]]


@pytest.fixture(scope="module")
def byte_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus()[:300], trainer)
    return tok


@pytest.mark.parametrize("kind", ["byte-bpe", "wordpiece"])
def test_deltas_add_up_to_the_full_decode(kind: str, byte_bpe: Tokenizer) -> None:
    tok = byte_bpe if kind == "byte-bpe" else train_wordpiece()
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        prompt, generated = ids[:3], ids[3:]
        detok = IncrementalDetokenizer(tok, prompt)
        deltas = [detok.push(t) for t in generated]
        out = "".join(deltas) + detok.flush()
        full = tok.decode(ids, skip_special_tokens=True)
        assert tok.decode(prompt, skip_special_tokens=True) + out == full
        assert all("\ufffd" not in d for d in deltas)


def test_a_multibyte_character_is_never_split(byte_bpe: Tokenizer) -> None:
    ids = byte_bpe.encode("🙂", add_special_tokens=False).ids
    assert len(ids) > 1  # the emoji's four bytes are not one token here
    detok = IncrementalDetokenizer(byte_bpe)
    deltas = [detok.push(t) for t in ids]
    assert deltas[:-1] == [""] * (len(ids) - 1) and deltas[-1] == "🙂"


def test_stop_across_deltas_cuts_the_text_before_it() -> None:
    m = StopMatcher(["\n\nUser:", "END"])
    out = [m.push(d) for d in ["Hello", " there\n", "\nUs", "er: hi"]]
    assert "".join(out) == "Hello there" and m.matched == "\n\nUser:"
    assert m.push("more") == "" and m.flush() == ""


def test_held_text_is_released_when_it_stops_looking_like_a_stop() -> None:
    m = StopMatcher(["STOP"])
    assert m.push("a ST") == "a "
    assert m.push("OP") == "" and m.matched == "STOP"
    m = StopMatcher(["STOP"])
    assert m.push("a ST") == "a "
    assert m.push("ART") == "START" and m.matched is None
    assert m.push(" S") == " " and m.flush() == "S"


def test_the_earliest_stop_wins() -> None:
    m = StopMatcher(["cd", "b"])
    assert m.push("abcd") == "a" and m.matched == "b"
    assert StopMatcher([]).push("anything") == "anything"


def test_include_keeps_the_stop_string_and_cuts_what_follows() -> None:
    m = StopMatcher(["END"], include=True)
    out = [m.push(d) for d in ["done E", "ND and more"]]
    assert "".join(out) == "done END" and m.matched == "END"


def test_special_tokens_kept_and_unspaced_as_vllm_renders_them() -> None:
    """WordPiece's decoder joins tokens with spaces, special ones too; with
    ``spaces_between_special_tokens`` false two in a row render back to back."""
    tok = train_wordpiece()
    tok.add_special_tokens(["[A]", "[B]"])
    a, b = tok.token_to_id("[A]"), tok.token_to_id("[B]")
    word = tok.encode("the", add_special_tokens=False).ids
    ids = [*word, a, b, *word]

    def render(**kw: object) -> str:
        detok = IncrementalDetokenizer(tok, **kw)  # type: ignore[arg-type]
        return "".join(detok.push(t) for t in ids) + detok.flush()

    assert render() == "the the"  # skipped
    spaced = render(skip_special=False)
    assert spaced == tok.decode(ids, skip_special_tokens=False) == "the [A] [B] the"
    added = {a: "[A]", b: "[B]"}
    assert render(skip_special=False, added=added) == "the [A][B] the"

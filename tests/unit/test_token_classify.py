"""Token classification against transformers' pipeline, on the tiny random NER model.

The model is random, so its labels mean nothing; what is checked is that every
strategy, window merge and word rule gives what the pipeline gives on the same logits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from squeezer.backends.torch_backend import TorchBackend
from squeezer.errors import EmptyInputError, InvalidRequestError
from squeezer.models import read_folder
from squeezer.tasks.encoder import EncoderRunner, Row
from squeezer.tasks.token_classify import (
    DEFAULT_AGGREGATION,
    EntityGroup,
    TokenClassifyRequest,
    TokenClassifyTask,
    TokenEntity,
    TokenLogitsHead,
    _merge_overlapping,
)
from squeezer.tasks.tokenizer import TextTokenizer
from tests.tiny_models import corpus

STRATEGIES = ("none", "simple", "first", "average", "max")
#: Unknown characters, an added token inside the text, accents, punctuation.
ODD = "Hello [MASK] wörld, café naïve ﬁsh 🙂 x-ray (re-run) U.S.A. isn't"


def sentences() -> list[str]:
    return [*corpus()[:8:2], ODD]


def long_text() -> str:
    return " ".join(corpus()[10:22])  # 444 tokens: four windows and more


def _task(path: Path) -> TokenClassifyTask:
    folder = read_folder(path)
    return TokenClassifyTask(folder, TextTokenizer(folder.tokenizer_file, folder.max_input_length))


def _pipeline(path: Path) -> Any:
    import transformers

    model = transformers.AutoModelForTokenClassification.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    return transformers.pipeline("token-classification", model=model, tokenizer=tok)


@pytest.fixture(scope="module")
def task(tiny_ner: Path) -> TokenClassifyTask:
    return _task(tiny_ner)


@pytest.fixture(scope="module")
def backend(tiny_ner: Path) -> TorchBackend:
    return TorchBackend(tiny_ner)


@pytest.fixture(scope="module")
def reference(tiny_ner: Path) -> Any:
    return _pipeline(tiny_ner)


def forward(backend: TorchBackend, items: list[Any]) -> list[Any]:
    runner = EncoderRunner()
    return runner.split(backend.forward(runner.collate(items), runner.outputs(items)), items)


def run(
    task: TokenClassifyTask, backend: TorchBackend, request: TokenClassifyRequest
) -> list[list[Any]]:
    """The whole path, as the engine takes it: prepare, batch, forward, split, finish."""
    items = task.prepare(request)
    return task.finish(request, items, forward(backend, items))


class Both:
    """Our task and the pipeline on the same inputs, each model run once per input set
    and stride: strategies and ignore_labels only re-read the same logits."""

    def __init__(self, task: TokenClassifyTask, backend: TorchBackend, pipe: Any) -> None:
        self.task, self.backend, self.pipe = task, backend, pipe
        self._ours: dict[Any, Any] = {}
        self._theirs: dict[Any, Any] = {}

    def ours(
        self, texts: list[str], strategy: str, ignore: list[str] | None, stride: int | None = None
    ) -> list[list[Any]]:
        key = (tuple(texts), stride)
        if key not in self._ours:
            items = self.task.prepare(TokenClassifyRequest(texts, stride=stride))
            self._ours[key] = items, forward(self.backend, items)
        items, results = self._ours[key]
        return self.task.finish(TokenClassifyRequest(texts, strategy, ignore), items, results)

    def theirs(
        self, texts: list[str], strategy: str, ignore: list[str] | None, stride: int | None = None
    ) -> list[list[dict[str, Any]]]:
        """The pipeline's own preprocess, forward and postprocess (what its __call__
        chains), with the forward passes cached."""
        pipe, key = self.pipe, (tuple(texts), stride)
        if key not in self._theirs:
            pre = pipe._sanitize_parameters(stride=stride)[0]
            self._theirs[key] = [
                [pipe.forward(x) for x in pipe.preprocess(t, **pre)] for t in texts
            ]
        post = pipe._sanitize_parameters(aggregation_strategy=strategy, ignore_labels=ignore)[2]
        return [pipe.postprocess(outputs, **post) for outputs in self._theirs[key]]


@pytest.fixture(scope="module")
def both(task: TokenClassifyTask, backend: TorchBackend, reference: Any) -> Both:
    return Both(task, backend, reference)


def assert_same(
    ours: list[list[Any]], theirs: list[list[dict[str, Any]]], *, index: bool = True
) -> None:
    """Same entities in the same order: labels, words, offsets exactly, scores to 1e-5."""
    assert len(ours) == len(theirs)
    for mine, ref in zip(ours, theirs, strict=True):
        got = [dataclasses.asdict(e) for e in mine]
        assert [list(g) for g in got] == [list(r) for r in ref]  # same fields, same order
        for g, r in zip(got, ref, strict=True):
            assert isinstance(g["score"], float) and g["score"] == pytest.approx(
                float(r.pop("score")), abs=1e-5
            )
            g.pop("score")
            if not index:
                g.pop("index", None)
                r.pop("index", None)
            assert g == {k: (int(v) if k in ("start", "end", "index") else v) for k, v in r.items()}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("ignore", [None, [], ["PER", "B-LOC"]])
def test_short_inputs_match_the_pipeline(
    both: Both, task: TokenClassifyTask, strategy: str, ignore: list[str] | None
) -> None:
    texts = sentences()
    ours = both.ours(texts, strategy, ignore)
    assert_same(ours, both.theirs(texts, strategy, ignore))
    found = [e for per_input in ours for e in per_input]
    assert found, "a random model still tags something"
    assert all(isinstance(e, TokenEntity if strategy == "none" else EntityGroup) for e in found)
    labels = {e.entity if isinstance(e, TokenEntity) else e.entity_group for e in found}
    assert not labels & set(["O"] if ignore is None else ignore)
    if ignore == []:
        tokens = sum(len(task.tokenizer.raw.encode(t).ids) - 2 for t in texts)
        if strategy == "none":
            assert len(found) == tokens
        else:  # tokens were joined into words and groups, not passed through
            assert len(found) < tokens


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
@pytest.mark.parametrize("stride", [0, 17, 64])
def test_long_input_matches_the_pipeline_with_stride(
    both: Both, task: TokenClassifyTask, strategy: str, stride: int
) -> None:
    text = long_text()
    assert len(task.tokenizer.raw.encode(text).ids) > 3 * 128
    ignores: list[list[str] | None] = [None, []]
    for ignore in ignores:
        ours = both.ours([text], strategy, ignore, stride)
        assert_same(ours, both.theirs([text], strategy, ignore, stride))


def test_nothing_past_the_first_window_is_lost(
    task: TokenClassifyTask, backend: TorchBackend, reference: Any
) -> None:
    text = long_text()
    first_window = task.tokenizer.windows(text, stride=task.default_stride)[0]
    assert first_window.offsets is not None
    window_end = max(end for _, end in first_window.offsets)
    ours = run(task, backend, TokenClassifyRequest([text], ignore_labels=[]))[0]
    last_token_end = task.tokenizer.raw.encode(text).offsets[-2][1]
    assert max(e.end for e in ours) == last_token_end > 3 * window_end
    late = [e for e in run(task, backend, TokenClassifyRequest([text]))[0] if e.start > window_end]
    assert late, "entities after the first window"
    truncated = reference(text, aggregation_strategy=DEFAULT_AGGREGATION)
    assert max(e["end"] for e in truncated) <= window_end  # the pipeline alone cuts
    # Without a stride in the request the default one is used (the pipeline whole).
    theirs = reference([text], aggregation_strategy="simple", stride=task.default_stride)
    assert_same(run(task, backend, TokenClassifyRequest([text])), theirs)


def test_strategy_none_windows_long_inputs_with_whole_text_indices(
    task: TokenClassifyTask, backend: TorchBackend, reference: Any, both: Both
) -> None:
    """The pipeline refuses stride with an explicit "none", yet windows and merges
    tokens when stride comes without a strategy; that is what "none" does here, with
    ``index`` counted in the whole input's tokens instead of in each window."""
    text = long_text()
    ours = run(task, backend, TokenClassifyRequest([text], "none", []))[0]
    theirs = reference([text], stride=task.default_stride, ignore_labels=[])
    assert_same([ours], theirs, index=False)
    default = [e for e in ours if e.entity != "O"]
    assert_same([default], both.theirs([text], "none", None, task.default_stride), index=False)
    full = task.tokenizer.raw.encode(text)
    assert len(ours) == len(full.ids) - 2  # every token once, overlaps merged
    for e in ours:
        assert tuple(full.offsets[e.index]) == (e.start, e.end)
        assert full.tokens[e.index] == e.word or full.ids[e.index] == task._unk_id
    assert [e.index for e in ours] == sorted({e.index for e in ours})


def test_inputs_keep_their_order_and_windows(
    task: TokenClassifyTask, backend: TorchBackend
) -> None:
    texts = [sentences()[0], long_text(), ODD, long_text()[:500]]
    together = run(task, backend, TokenClassifyRequest(texts, "average", stride=40))
    alone = [run(task, backend, TokenClassifyRequest([t], "average", stride=40))[0] for t in texts]
    assert len(together) == len(texts)
    for a, b in zip(together, alone, strict=True):
        assert [(e.entity_group, e.start, e.end, e.word) for e in a] == [
            (e.entity_group, e.start, e.end, e.word) for e in b
        ]
        assert np.allclose([e.score for e in a], [e.score for e in b], atol=1e-5)


def test_tokenizer_without_subword_prefix_uses_the_fallback_heuristic(
    tiny_ner: Path, tmp_path: Path, backend: TorchBackend
) -> None:
    """Without a continuing-subword prefix the pipeline guesses words from spaces."""
    path = tmp_path / "no-prefix"
    shutil.copytree(tiny_ner, path)
    spec = json.loads((path / "tokenizer.json").read_text())
    spec["model"]["continuing_subword_prefix"] = ""
    (path / "tokenizer.json").write_text(json.dumps(spec))
    task, reference = _task(path), _pipeline(path)
    assert not task._subword_prefix
    texts = sentences()
    for strategy in ("simple", "first", "max"):
        ours = run(task, backend, TokenClassifyRequest(texts, strategy, []))
        warns = strategy != "simple"
        with pytest.warns(UserWarning, match="fallback") if warns else contextlib.nullcontext():
            theirs = reference(texts, aggregation_strategy=strategy, ignore_labels=[])
        assert_same(ours, theirs)


def test_overlapping_entities_keep_the_longer_then_the_surer_then_the_first() -> None:
    def group(score: float, start: int, end: int, word: str = "w") -> EntityGroup:
        return EntityGroup("PER", score, word, start, end)

    merged = _merge_overlapping(
        [
            group(0.5, 0, 4, "first"),
            group(0.9, 10, 14),
            group(0.5, 0, 4, "tie"),  # same span, same score: the earlier window's stays
            group(0.6, 10, 14, "less sure"),
            group(0.1, 12, 20, "longer"),  # starts inside and is longer: replaces
            group(0.7, 30, 32),
        ]
    )
    assert [(e.word, e.start, e.end) for e in merged] == [
        ("first", 0, 4),
        ("longer", 12, 20),
        ("w", 30, 32),
    ]


def test_head_returns_each_rows_real_tokens_as_float32_copies() -> None:
    logits = np.arange(2 * 5 * 3, dtype=np.float16).reshape(2, 5, 3)
    dummy: Any = None
    rows = [Row(dummy, 1, 4, slice(0, 0)), Row(dummy, 0, 2, slice(0, 0))]
    taken = TokenLogitsHead().take({"logits": logits}, rows)
    assert [t.shape for t in taken] == [(4, 3), (2, 3)]
    assert all(t.dtype == np.float32 for t in taken)
    assert np.array_equal(taken[0], logits[1, :4])
    taken[0][:] = 0
    assert logits[1, 0, 1] == 16


def test_strategy_names_are_checked_and_case_blind(task: TokenClassifyTask) -> None:
    with pytest.raises(InvalidRequestError, match="aggregation_strategy") as e:
        task.prepare(TokenClassifyRequest(["x"], "longest"))
    assert e.value.param == "aggregation_strategy"
    assert len(task.prepare(TokenClassifyRequest(["Hello world"], "FIRST"))) == 1


@pytest.mark.parametrize("stride", [-1, 126, 1000])
def test_stride_out_of_range_is_refused(task: TokenClassifyTask, stride: int) -> None:
    with pytest.raises(InvalidRequestError, match="stride") as e:
        task.prepare(TokenClassifyRequest(["Hello world"], stride=stride))
    assert e.value.param == "stride"


def test_stride_with_strategy_none_is_refused_like_the_pipeline(
    task: TokenClassifyTask, reference: Any
) -> None:
    with pytest.raises(InvalidRequestError, match="none") as e:
        task.prepare(TokenClassifyRequest(["Hello world"], "none", stride=10))
    assert e.value.param == "stride"
    with pytest.raises(ValueError, match="stride"):
        reference("Hello world", aggregation_strategy="none", stride=10)


def test_largest_stride_and_empty_inputs(task: TokenClassifyTask) -> None:
    assert task.default_stride == 128 // 4
    windows = task.prepare(TokenClassifyRequest([long_text()[:700]], stride=125))
    assert len(windows) > 1 and all(w.num_tokens <= 128 for w in windows)
    with pytest.raises(EmptyInputError):
        task.prepare(TokenClassifyRequest([]))
    with pytest.raises(EmptyInputError):
        task.prepare(TokenClassifyRequest(["ok", ""]))

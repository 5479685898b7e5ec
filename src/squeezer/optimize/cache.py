"""``squeezer serve --optimize``: the search at start-up, done once per model and machine.

Artifacts are kept under a key of the model's content hash, the hardware fingerprint
and the budget, so a second start (or a restart after a crash) loads the artifact in
seconds, while a changed model, a different CPU or another budget searches again.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from squeezer.backends.device import compute_threads, gpu_name
from squeezer.models import read_folder
from squeezer.models.manifest import MANIFEST_FILE, current_hardware
from squeezer.optimize import report
from squeezer.optimize.search import OptimizeSettings, Search

log = logging.getLogger("squeezer.optimize")


def default_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "squeezer" / "optimized"


def cache_key(path: Path, max_loss: float, device: str = "cpu") -> str:
    folder = read_folder(path)
    hardware = current_hardware(compute_threads(), gpu_name(device))
    return f"{folder.content_hash()[:16]}-{hardware.fingerprint}-loss{max_loss:g}"


def optimized_artifact(
    path: Path, max_loss: float, cache: Path | None = None, device: str = "cpu"
) -> Path:
    """The artifact for ``path`` on this machine and device: cached, or searched now."""
    root = cache or default_cache()
    target = root / cache_key(path, max_loss, device)
    if (target / MANIFEST_FILE).is_file():
        log.info("optimized artifact for %s found in the cache: %s", path, target)
        return target
    shutil.rmtree(target, ignore_errors=True)  # a broken earlier attempt, if any
    root.mkdir(parents=True, exist_ok=True)
    scratch = root / f".{target.name}.{os.getpid()}"
    t0 = time.perf_counter()
    log.info("optimizing %s (max loss %g); the result is cached in %s", path, max_loss, target)

    def progress(name: str, step: str) -> None:
        log.info("optimize %s: %s", name, step)

    result = Search(
        OptimizeSettings(
            model=str(path),
            out=scratch,
            max_loss=max_loss,
            speed_budget_s=2.0,
            device=device,
            in_server=True,
        ),
        progress,
    ).run()
    report.write(result)
    try:
        scratch.rename(target)
    except OSError:  # another process finished first: use its artifact
        shutil.rmtree(scratch, ignore_errors=True)
    log.info(
        "optimized %s in %.0f s: serving %s",
        path,
        time.perf_counter() - t0,
        result.manifest.candidate,
    )
    return target

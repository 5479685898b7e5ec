"""A rich progress bar for the search: one step per candidate, the current stage shown,
and the time spent against the search's time budget."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


class SearchProgress:
    def __init__(self, console: Console, budget_s: float = 0.0) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[budget]}"),
            console=console,
            transient=False,
        )
        budget = f"of {_clock(budget_s)} budget" if budget_s > 0 else "(no time budget)"
        self._task = self._progress.add_task("preparing texts", total=None, budget=budget)

    def start(self, candidates: int) -> None:
        self._progress.update(self._task, total=candidates)

    def update(self, name: str, step: str) -> None:
        if step == "done":
            self._progress.advance(self._task)
        self._progress.update(self._task, description=f"{name}: {step}")

    def __enter__(self) -> SearchProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

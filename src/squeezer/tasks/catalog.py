"""Which task class serves which ``Task``: the one place that maps names to code."""

from __future__ import annotations

from collections.abc import Callable

from squeezer.errors import ModelLoadError
from squeezer.models import ModelFolder
from squeezer.tasks.classify import ClassifyTask
from squeezer.tasks.embed import EmbedTask
from squeezer.tasks.encoder import EncoderTask
from squeezer.tasks.fill_mask import FillMaskTask
from squeezer.tasks.question_answering import QATask
from squeezer.tasks.rerank import RerankTask
from squeezer.tasks.token_classify import TokenClassifyTask
from squeezer.tasks.tokenizer import TextTokenizer
from squeezer.tasks.zero_shot import ZeroShotTask
from squeezer.types import Task

_FACTORIES: dict[Task, Callable[[ModelFolder, TextTokenizer], EncoderTask]] = {
    Task.EMBED: EmbedTask,
    Task.CLASSIFY: ClassifyTask,
    Task.RERANK: RerankTask,
    Task.ZERO_SHOT: ZeroShotTask,
    Task.TOKEN_CLASSIFY: TokenClassifyTask,
    Task.FILL_MASK: FillMaskTask,
    Task.QUESTION_ANSWERING: QATask,
}
ENCODER_TASKS = tuple(_FACTORIES)


def build_tasks(
    name: str, tasks: tuple[Task, ...], folder: ModelFolder, tokenizer: TextTokenizer
) -> dict[Task, EncoderTask]:
    """One task object per task a model serves; a task its files cannot do fails here,
    at start-up, with the reason."""
    possible = folder.possible_tasks()
    built: dict[Task, EncoderTask] = {}
    for task in tasks:
        factory = _FACTORIES.get(task)
        if factory is None:
            raise ModelLoadError(
                f"model {name!r}: task {task.value!r} is not served by this version "
                f"(encoder tasks: {', '.join(t.value for t in ENCODER_TASKS)})"
            )
        if task not in possible:
            raise ModelLoadError(
                f"model {name!r} ({', '.join(folder.architectures) or folder.model_type}) "
                f"cannot do {task.value!r}; it can do "
                f"{', '.join(t.value for t in possible) or 'nothing squeezer serves'}"
            )
        try:
            built[task] = factory(folder, tokenizer)
        except ValueError as e:
            raise ModelLoadError(f"model {name!r} cannot do {task.value!r}: {e}") from e
    return built

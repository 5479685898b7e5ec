"""Which served model a request means: by name, or by the task the route implies.

Routes that name no model (TEI's, ``POST /``) and the placeholders clients send when
they only know a base URL (``huggingface_hub`` sends ``dummy`` or ``tgi``; others send
nothing or an empty string) resolve to the default model of the route's task: the one
``--default-model`` names for that task, else the first served model that can do it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from squeezer.errors import ModelLoadError, ModelNotFoundError, TaskNotSupportedError
from squeezer.models import ModelFolder
from squeezer.tasks import EmbedTask, EncoderTask, TextTokenizer
from squeezer.tasks.generate import GenerateTask
from squeezer.types import ModelInfo, Task

#: Model names that mean "whatever this server's default is".
PLACEHOLDER_NAMES = frozenset({"", "dummy", "tgi", "default", "tei"})


@dataclass(slots=True)
class ServedModel:
    """A loaded model and the task objects that serve it."""

    info: ModelInfo
    folder: ModelFolder
    tokenizer: TextTokenizer
    tasks: dict[Task, EncoderTask]
    #: Causal LMs: prompts, chat templates and streamed text.
    generator: GenerateTask | None = None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def embed(self) -> EmbedTask | None:
        task = self.tasks.get(Task.EMBED)
        return task if isinstance(task, EmbedTask) else None

    @property
    def main_task(self) -> Task:
        return self.info.tasks[0]


class ModelRegistry:
    """Served models in the order they were configured, plus per-task defaults."""

    def __init__(self, defaults: dict[str, str] | None = None) -> None:
        self._models: dict[str, ServedModel] = {}
        self._defaults: dict[Task, str] = {}
        for task, name in (defaults or {}).items():
            try:
                self._defaults[Task(task)] = name
            except ValueError:
                known = ", ".join(t.value for t in Task)
                raise ModelLoadError(
                    f"--default-model {task}={name}: unknown task {task!r} (tasks: {known})"
                ) from None

    def add(self, model: ServedModel) -> None:
        self._models[model.name] = model

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def check_defaults(self) -> None:
        """Fail at start-up, not per request, when a configured default is wrong."""
        for task, name in self._defaults.items():
            model = self._models.get(name)
            if model is None:
                raise ModelNotFoundError(f"--default-model {task.value}={name}: no such model")
            if task not in model.info.tasks:
                raise TaskNotSupportedError(
                    f"--default-model {task.value}={name}: model serves "
                    f"{[t.value for t in model.info.tasks]}"
                )

    def serving(self, task: Task) -> list[str]:
        return [m.name for m in self._models.values() if task in m.info.tasks]

    def default_for(self, task: Task) -> ServedModel:
        name = self._defaults.get(task)
        if name is not None:
            return self._models[name]
        for model in self._models.values():
            if task in model.info.tasks:
                return model
        raise TaskNotSupportedError(
            f"no served model can do {task.value!r}; served: "
            + ", ".join(f"{m.name} ({'/'.join(t.value for t in m.info.tasks)})" for m in self)
        )

    def get(self, name: str | None, task: Task | None = None) -> ServedModel:
        """The named model (placeholders mean the task's default); checks the task."""
        if name is None or name in PLACEHOLDER_NAMES:
            if task is None:
                return next(iter(self._models.values()))
            return self.default_for(task)
        model = self._models.get(name)
        if model is None:
            raise ModelNotFoundError(
                f"model {name!r} is not served here; served: {', '.join(self._models)}",
                param="model",
            )
        if task is not None:
            self.check(model, task)
        return model

    def check(self, model: ServedModel, task: Task) -> None:
        """Refuse a task the model cannot do, naming what it can and who can."""
        if task in model.info.tasks:
            return
        others = self.serving(task)
        raise TaskNotSupportedError(
            f"model {model.name!r} does not serve {task.value!r}; it serves "
            f"{', '.join(t.value for t in model.info.tasks)}. "
            + (
                f"Models serving {task.value!r}: {', '.join(others)}"
                if others
                else f"No served model can do {task.value!r}"
            ),
            param="model",
        )

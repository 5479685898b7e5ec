"""When work runs: per-model queues, token-budget batching, one compute thread per device.

The server builds one ``Engine``, adds each model with its backend and the task's
``BatchRunner``, ``start``s it, ``submit``s requests, and ``stop``s it to drain.
"""

from squeezer.engine.engine import Engine
from squeezer.engine.executor import DeviceExecutor, Later, WorkSource
from squeezer.engine.limits import EngineLimits
from squeezer.engine.observer import EngineObserver, NullObserver

__all__ = [
    "DeviceExecutor",
    "Engine",
    "EngineLimits",
    "EngineObserver",
    "Later",
    "NullObserver",
    "WorkSource",
]

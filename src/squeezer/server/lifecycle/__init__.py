"""Model versions' lifecycle: load, verify, flip aliases, drain and free
(``manager``); how a load joins the engine (``placing``); what is reported
(``status``); the API processes' copies (``peers``)."""

from squeezer.server.lifecycle.manager import ADMIN_OPS, LoadRequest, ModelManager
from squeezer.server.lifecycle.peers import Mirror, NoPeers, Peers
from squeezer.server.lifecycle.status import ModelStatus, VersionStatus, statuses

__all__ = [
    "ADMIN_OPS",
    "LoadRequest",
    "Mirror",
    "ModelManager",
    "ModelStatus",
    "NoPeers",
    "Peers",
    "VersionStatus",
    "statuses",
]

"""The ingress's route beyond squeezer's own: where each engine replica's metrics are."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from squeezer.cluster.targets import target_board
from squeezer.server.jsonio import json_response

router = APIRouter()


@router.get(
    "/metrics/targets",
    summary="Prometheus HTTP service discovery: each engine replica's metrics endpoint "
    "(the admin key when one is set)",
)
async def metrics_targets() -> Response:
    from ray import serve

    board = target_board(serve.get_replica_context().app_name)
    return json_response(await board.targets.remote())

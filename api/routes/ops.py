"""``/healthz`` (no auth) and ``/metrics`` (Prometheus text format, auth)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from api.deps import ContextDep, require_token
from api.schemas import ErrorBody, HealthPublic

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="Liveness (no auth)")
async def healthz() -> HealthPublic:
    # async: no blocking work, so no thread-pool hop.
    return HealthPublic()


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    dependencies=[Depends(require_token)],
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text format",
        },
        401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
        429: {"model": ErrorBody, "description": "too many failed authentication attempts (see Retry-After)"},
    },
)
def metrics(ctx: ContextDep) -> Response:
    # The 0.0.4 text format: what every Prometheus version parses (our names are plain ASCII).
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)

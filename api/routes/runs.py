"""``/v1/runs``: submit, list, inspect, cancel and resume runs; read their shards, stats and samples."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from api.deps import RunId, RunServiceDep, SpecBody, StageName, reject_unknown_query, require_token
from api.schemas import (
    RUN_SPEC_EXAMPLE,
    ErrorBody,
    RunPublic,
    RunsPublic,
    RunStatsPublic,
    SamplesPublic,
    ShardsPublic,
)
from api.services.run_data import list_shards, read_samples, read_stats

# Offsets beyond this are refused (422) rather than handed to the database, whose
# integer type they could overflow.
MAX_OFFSET = 1_000_000_000


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "missing or wrong bearer token",
        404: "no such run",
        413: "request body too large",
        409: "the run is in a state that does not allow this, or a shard failed its sha256 check",
        422: "invalid input; `error.field` names the field",
        429: "too many failed authentication attempts from this address (see Retry-After)",
        503: "the run's Ray cluster cannot be reached now",
    }
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


router = APIRouter(
    prefix="/v1/runs",
    tags=["runs"],
    dependencies=[Depends(require_token), Depends(reject_unknown_query)],
    responses=_errors(401, 422, 429),
)

CREATE_BODY = {
    "requestBody": {
        "required": True,
        "description": "a run spec (DESIGN §5), as JSON; unknown keys are an error",
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/RunCreate"},
                "examples": {"quickstart": {"summary": "documents → planning", "value": RUN_SPEC_EXAMPLE}},
            }
        },
    }
}


@router.post(
    "",
    status_code=201,
    summary="Submit a run",
    openapi_extra=CREATE_BODY,
    responses=_errors(413, 422, 503),
)
def create_run(runs: RunServiceDep, spec: SpecBody) -> RunPublic:
    """Validate the spec (paths confined to the data dir), create the run directory, start its driver."""
    return runs.create(spec).public()


@router.get("", summary="List runs, newest first")
def list_runs(
    runs: RunServiceDep,
    limit: Annotated[int, Query(ge=1, le=200, description="page size")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="runs to skip")] = 0,
) -> RunsPublic:
    views, count = runs.list(limit, offset)
    return RunsPublic(data=[v.public() for v in views], count=count, limit=limit, offset=offset)


@router.get("/{run_id}", summary="A run's state and per-stage progress", responses=_errors(404, 422))
def get_run(runs: RunServiceDep, run_id: RunId) -> RunPublic:
    return runs.get(run_id).public()


@router.post(
    "/{run_id}/cancel",
    status_code=202,
    summary="Ask the run's driver to stop",
    responses=_errors(404, 409, 422),
)
def cancel_run(runs: RunServiceDep, run_id: RunId) -> RunPublic:
    """Writes the CANCEL marker that the driver polls; the run becomes `cancelled` when it stops."""
    return runs.cancel(run_id).public()


@router.post(
    "/{run_id}/resume",
    status_code=202,
    summary="Restart a failed or cancelled run",
    responses=_errors(404, 409, 422, 503),
)
def resume_run(runs: RunServiceDep, run_id: RunId) -> RunPublic:
    """Relaunches `agentcpt run SPEC --run-id ID`; committed work units are not recomputed."""
    return runs.resume(run_id).public()


@router.get("/{run_id}/shards", summary="Committed files (manifest rows)", responses=_errors(404, 422))
def get_shards(
    runs: RunServiceDep,
    run_id: RunId,
    stage: Annotated[StageName | None, Query(description="only this stage")] = None,
) -> ShardsPublic:
    rows = list_shards(runs.run_dir(run_id), stage)
    return ShardsPublic(data=rows, count=len(rows))


@router.get(
    "/{run_id}/stats", summary="Per-stage counts, acceptance rates, tokens", responses=_errors(404, 409, 422)
)
def get_stats(runs: RunServiceDep, run_id: RunId) -> RunStatsPublic:
    return read_stats(runs.run_dir(run_id))


@router.get(
    "/{run_id}/samples", summary="A page of a stage's records", responses=_errors(404, 409, 422)
)
def get_samples(
    runs: RunServiceDep,
    run_id: RunId,
    stage: Annotated[StageName, Query(description="stage to read")],
    limit: Annotated[int, Query(ge=1, le=100, description="records per page")] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="records to skip")] = 0,
) -> SamplesPublic:
    return read_samples(runs.run_dir(run_id), stage, limit, offset)

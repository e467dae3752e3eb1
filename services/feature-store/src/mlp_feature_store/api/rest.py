"""REST API of the feature store: a router factory over the transport-agnostic ``FeatureStoreService``."""

from __future__ import annotations

import tempfile
from typing import Annotated, Any

import orjson
import yaml
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from mlp_core.auth import CurrentPrincipal
from mlp_core.errors import InvalidArgument, PayloadTooLarge
from mlp_feature_store.api.rest_io import (
    EraseIn,
    FileFormat,
    HistoricalIn,
    MaterializeIn,
    OnlineIn,
    PushIn,
    RowsIn,
    arrow_stream,
    entity_table,
    online_json,
    read_batches,
)
from mlp_feature_store.domain.definitions_file import parse_definitions, sections_to_items
from mlp_feature_store.domain.ingestion import rows_to_batch
from mlp_feature_store.domain.service import FeatureStoreService
from mlp_feature_store.domain.timeutil import to_us
from mlp_feature_store.store.base import IngestResult

KIND_PATHS = {"entities": "entity", "data-sources": "data_source", "feature-views": "feature_view",
              "transformations": "transformation", "feature-services": "feature_service"}
MAX_UPLOAD_BYTES = 2 << 30
_SPOOL_IN_MEMORY = 8 << 20


def _kind(kind_path: str) -> str:
    kind = KIND_PATHS.get(kind_path)
    if kind is None:
        raise InvalidArgument(f"unknown collection '{kind_path}'; use one of {sorted(KIND_PATHS)}")
    return kind


def _ingest_json(result: IngestResult | None) -> dict[str, Any]:
    if result is None:
        return {"duplicate": True}
    return {"run_id": result.run_id, "rows_in": result.rows_in, "rows_written": result.rows_written,
            "rows_quarantined": result.rows_quarantined, "failures": result.failures}


async def _definition_items(request: Request) -> list[tuple[str, dict[str, Any]]]:
    body = await request.body()
    if "yaml" in request.headers.get("content-type", ""):
        return parse_definitions(body)
    try:
        return sections_to_items(yaml.safe_load(body))
    except yaml.YAMLError:
        raise InvalidArgument("the body must be JSON or YAML") from None


def build_router(service: FeatureStoreService) -> APIRouter:
    """All feature-store endpoints, under ``/projects/{project}``."""
    r = APIRouter(prefix="/projects/{project}", tags=["feature-store"])

    # -- definitions -------------------------------------------------------------------------

    @r.post("/plan")
    async def plan(project: str, request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
        items = await _definition_items(request)
        return {"changes": [c.as_dict() for c in service.registry.plan(principal, project, items)]}

    @r.post("/apply")
    async def apply(project: str, request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
        items = await _definition_items(request)
        return {"changes": [c.as_dict() for c in service.registry.apply(principal, project, items)]}

    @r.get("/search")
    def search(project: str, principal: CurrentPrincipal, tag: str | None = None, owner: str | None = None,
               pii: bool | None = None, text: str | None = None) -> dict[str, Any]:
        return {"features": service.compliance.search(principal, project, tag=tag, owner=owner, pii=pii,
                                                      text=text)}

    @r.get("/feature-services/{name}/lineage")
    def lineage(project: str, name: str, principal: CurrentPrincipal) -> dict[str, Any]:
        return service.compliance.lineage(principal, project, name)

    @r.get("/{kind_path}")
    def list_definitions(project: str, kind_path: str, principal: CurrentPrincipal) -> dict[str, Any]:
        items = service.registry.list_kind(principal, project, _kind(kind_path))
        return {"items": [d.model_dump(mode="json") for d in items]}

    @r.get("/{kind_path}/{name}")
    def get_definition(project: str, kind_path: str, name: str, principal: CurrentPrincipal,
                       version: int | None = None) -> dict[str, Any]:
        return service.registry.get(principal, project, _kind(kind_path), name, version).model_dump(mode="json")

    @r.put("/{kind_path}/{name}")
    def put_definition(project: str, kind_path: str, name: str, body: dict[str, Any],
                       principal: CurrentPrincipal) -> dict[str, Any]:
        if body.get("name", name) != name:
            raise InvalidArgument("the name in the body differs from the name in the path")
        change = service.registry.apply_one(principal, project, _kind(kind_path), {**body, "name": name})
        return change.as_dict()

    @r.delete("/{kind_path}/{name}", status_code=204)
    def delete_definition(project: str, kind_path: str, name: str, principal: CurrentPrincipal) -> None:
        service.registry.delete(principal, project, _kind(kind_path), name)

    # -- ingestion and materialization -------------------------------------------------------

    @r.post("/feature-views/{name}/rows")
    def ingest_rows(project: str, name: str, body: RowsIn, principal: CurrentPrincipal) -> dict[str, Any]:
        return _ingest_json(service.ingestion.ingest(principal, project, name, [rows_to_batch(body.rows)],
                                                     timestamp_column=body.timestamp_column, source="json"))

    @r.post("/feature-views/{name}/files")
    async def ingest_file(project: str, name: str, request: Request, principal: CurrentPrincipal,
                          format: Annotated[FileFormat, Query()] = "parquet",
                          timestamp_column: str = "event_timestamp") -> dict[str, Any]:
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
        try:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise PayloadTooLarge(f"the upload is over {MAX_UPLOAD_BYTES} bytes; split it")
                spool.write(chunk)
            if size == 0:
                raise InvalidArgument("the upload is empty")
            result = service.ingestion.ingest(principal, project, name, read_batches(spool, format),
                                              timestamp_column=timestamp_column, source=format)
            return _ingest_json(result)
        finally:
            spool.close()

    @r.post("/feature-views/{name}/push")
    def push(project: str, name: str, body: PushIn, principal: CurrentPrincipal) -> dict[str, Any]:
        return _ingest_json(service.ingestion.push(principal, project, name, body.rows, event_id=body.event_id,
                                                   timestamp_column=body.timestamp_column))

    @r.get("/feature-views/{name}/ingestions")
    def ingestions(project: str, name: str, principal: CurrentPrincipal) -> dict[str, Any]:
        return {"runs": service.ingestion.runs(principal, project, name)}

    @r.post("/feature-views/{name}/materialize")
    def materialize(project: str, name: str, body: MaterializeIn, principal: CurrentPrincipal
                    ) -> dict[str, Any]:
        run = service.materialization.materialize(
            principal, project, name, start_us=to_us(body.start, "start") if body.start else None,
            end_us=to_us(body.end, "end") if body.end else None)
        return run.__dict__

    @r.get("/feature-views/{name}/materializations")
    def materializations(project: str, name: str, principal: CurrentPrincipal) -> dict[str, Any]:
        return {"runs": service.materialization.history(principal, project, name)}

    # -- reads -------------------------------------------------------------------------------

    @r.post("/historical-features")
    def historical(project: str, body: HistoricalIn, principal: CurrentPrincipal) -> StreamingResponse:
        batches = service.retrieval.historical(
            principal, project, entity_table(body), features=body.features,
            feature_service=body.feature_service, timestamp_column=body.timestamp_column,
            no_backfill=body.no_backfill)
        first = next(batches)  # input errors surface here, before the response starts
        media = "application/vnd.apache.arrow.stream" if body.format == "arrow" else "application/vnd.apache.parquet"
        return StreamingResponse(arrow_stream(first, batches, body.format), media_type=media)

    @r.post("/online-features")
    async def online(project: str, body: OnlineIn, principal: CurrentPrincipal) -> Response:
        # Hot path: inline (one pipelined Redis round trip, cached metadata), encoded by orjson directly.
        result = await service.retrieval.online_async(principal, project, body.entities, features=body.features,
                                                      feature_service=body.feature_service,
                                                      max_staleness_s=body.max_staleness_s)
        return Response(orjson.dumps(online_json(result)), media_type="application/json")

    # -- compliance --------------------------------------------------------------------------

    @r.post("/erasures")
    def erase(project: str, body: EraseIn, principal: CurrentPrincipal) -> dict[str, Any]:
        return service.compliance.erase(principal, project, body.entity, body.keys)

    @r.get("/erasures")
    def erasures(project: str, principal: CurrentPrincipal) -> dict[str, Any]:
        return {"erasures": service.compliance.erasures(principal, project)}

    return r

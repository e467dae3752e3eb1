"""gRPC API: ``mlp.featurestore.v1.FeatureStoreService`` over the transport-agnostic ``FeatureStoreService``.

Every RPC reads the caller from ``mlp_core.auth.current_principal()`` (set by the host's auth
interceptor); domain errors become gRPC status codes in the host's ``ErrorInterceptor``. Blocking work
runs in a worker thread, except ``GetOnlineFeatures``: it is one pipelined Redis round trip plus cached
metadata, and running it inline is faster than a thread hop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
import pyarrow as pa

from mlp_core.auth import current_principal
from mlp_core.errors import AlreadyExists, InvalidArgument, NotFound
from mlp_feature_store.api import converters as cv
from mlp_feature_store.api.online_wire import online_response_bytes
from mlp_feature_store.domain.access import WRITE, authorize
from mlp_feature_store.domain.ingestion import rows_to_batch
from mlp_feature_store.domain.models import Entity, FeatureService, FeatureView
from mlp_feature_store.domain.service import FeatureStoreService
from mlp_protos.mlp.featurestore.v1 import featurestore_pb2 as pb
from mlp_protos.mlp.featurestore.v1 import featurestore_pb2_grpc as pb_grpc

T = TypeVar("T")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FeatureStoreService"].full_name
_MAX_PAGE = 1_000


def _page(items: list[T], page_size: int, token: str) -> tuple[list[T], str]:
    """A page of ``items`` and the token of the next one (an offset); INVALID_ARGUMENT for a bad token."""
    try:
        start = int(token) if token else 0
    except ValueError:
        raise InvalidArgument("page_token is not a token this service returned") from None
    size = min(page_size if page_size > 0 else 100, _MAX_PAGE)
    if start < 0:
        raise InvalidArgument("page_token is not a token this service returned")
    end = start + size
    return items[start:end], str(end) if end < len(items) else ""


async def _run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking domain code in a worker thread (the principal's context goes along)."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def online_features(service: FeatureStoreService, request: pb.GetOnlineFeaturesRequest
                          ) -> pb.GetOnlineFeaturesResponse:
    """``GetOnlineFeatures`` for the current principal, as a message (the gRPC server)."""
    return pb.GetOnlineFeaturesResponse.FromString(await online_features_bytes(service, request))


async def online_features_bytes(service: FeatureStoreService, request: pb.GetOnlineFeaturesRequest) -> bytes:
    """``GetOnlineFeatures`` for the current principal, serialized (the fast port sends these bytes as they are)."""
    entities = cv.columns_from_pb(request.entities)
    staleness = None
    if request.HasField("max_staleness"):
        staleness = request.max_staleness.seconds + request.max_staleness.nanos / 1e9
        if staleness <= 0:
            raise InvalidArgument("max_staleness must be positive")
    result = await service.retrieval.online_async(
        current_principal(), request.project, entities, features=list(request.features) or None,
        feature_service=request.feature_service or None, max_staleness_s=staleness)
    return online_response_bytes(result, result.dtypes, request.full_feature_names, request.status_per_view)


class FeatureStoreServicer(pb_grpc.FeatureStoreServiceServicer):
    """Each RPC: convert the request, call the domain service as the current principal, convert back."""

    def __init__(self, service: FeatureStoreService) -> None:
        self.service = service

    # -- definitions ------------------------------------------------------------------------

    def _create(self, project: str, kind: str, spec: dict[str, Any], upsert: bool) -> Any:
        caller = current_principal()
        registry = self.service.registry
        authorize(caller, project, WRITE)
        if not upsert and registry.store.get(project, kind, spec.get("name", "")) is not None:
            raise AlreadyExists(f"{kind.replace('_', ' ')} '{spec.get('name')}' already exists in project "
                                f"'{project}'; set upsert to replace it")
        registry.apply_one(caller, project, kind, spec)
        return registry.load(project, kind, spec["name"])

    def _get(self, project: str, kind: str, name: str) -> Any:
        return self.service.registry.get(current_principal(), project, kind, name)

    def _list(self, project: str, kind: str) -> list[Any]:
        return self.service.registry.list_kind(current_principal(), project, kind)

    def _delete(self, project: str, kind: str, name: str) -> None:
        self.service.registry.delete(current_principal(), project, kind, name)

    async def CreateEntity(self, request: pb.CreateEntityRequest, context: grpc.aio.ServicerContext) -> pb.Entity:
        """Create (or upsert) an entity."""
        e = request.entity
        created: Entity = await _run(self._create, e.project, "entity", cv.entity_from_pb(e), request.upsert)
        return cv.entity_to_pb(e.project, created)

    async def GetEntity(self, request: pb.GetEntityRequest, context: grpc.aio.ServicerContext) -> pb.Entity:
        """One entity."""
        return cv.entity_to_pb(request.project, await _run(self._get, request.project, "entity", request.name))

    async def ListEntities(self, request: pb.ListEntitiesRequest, context: grpc.aio.ServicerContext
                           ) -> pb.ListEntitiesResponse:
        """A page of entities."""
        items, token = _page(await _run(self._list, request.project, "entity"), request.page_size,
                             request.page_token)
        return pb.ListEntitiesResponse(entities=[cv.entity_to_pb(request.project, e) for e in items],
                                       next_page_token=token)

    async def DeleteEntity(self, request: pb.DeleteEntityRequest, context: grpc.aio.ServicerContext
                           ) -> pb.DeleteEntityResponse:
        """Delete an entity (refused while a view uses it)."""
        await _run(self._delete, request.project, "entity", request.name)
        return pb.DeleteEntityResponse()

    def _create_view(self, msg: pb.FeatureView, upsert: bool) -> FeatureView:
        version = msg.revision
        if version == 0:
            current = self.service.registry.store.get(msg.project, "feature_view", msg.name)
            version = current.version if current is not None and upsert else 1
        created: FeatureView = self._create(msg.project, "feature_view", cv.feature_view_from_pb(msg, version), upsert)
        return created

    async def CreateFeatureView(self, request: pb.CreateFeatureViewRequest, context: grpc.aio.ServicerContext
                                ) -> pb.FeatureView:
        """Create (or upsert, with the schema change checked) a feature view."""
        view = await _run(self._create_view, request.feature_view, request.upsert)
        return cv.feature_view_to_pb(request.feature_view.project, view)

    async def GetFeatureView(self, request: pb.GetFeatureViewRequest, context: grpc.aio.ServicerContext
                             ) -> pb.FeatureView:
        """The newest version of a feature view."""
        view = await _run(self._get, request.project, "feature_view", request.name)
        return cv.feature_view_to_pb(request.project, view)

    async def ListFeatureViews(self, request: pb.ListFeatureViewsRequest, context: grpc.aio.ServicerContext
                               ) -> pb.ListFeatureViewsResponse:
        """A page of feature views, optionally of one entity."""
        views: list[FeatureView] = await _run(self._list, request.project, "feature_view")
        if request.entity:
            views = [v for v in views if request.entity in v.entities]
        items, token = _page(views, request.page_size, request.page_token)
        return pb.ListFeatureViewsResponse(feature_views=[cv.feature_view_to_pb(request.project, v) for v in items],
                                           next_page_token=token)

    async def DeleteFeatureView(self, request: pb.DeleteFeatureViewRequest, context: grpc.aio.ServicerContext
                                ) -> pb.DeleteFeatureViewResponse:
        """Delete a feature view (refused while a feature service uses it)."""
        await _run(self._delete, request.project, "feature_view", request.name)
        return pb.DeleteFeatureViewResponse()

    async def CreateFeatureService(self, request: pb.CreateFeatureServiceRequest,
                                   context: grpc.aio.ServicerContext) -> pb.FeatureService:
        """Create (or upsert) a feature service."""
        msg = request.feature_service
        created: FeatureService = await _run(self._create, msg.project, "feature_service",
                                             cv.feature_service_from_pb(msg), request.upsert)
        return cv.feature_service_to_pb(msg.project, created)

    async def GetFeatureService(self, request: pb.GetFeatureServiceRequest, context: grpc.aio.ServicerContext
                                ) -> pb.FeatureService:
        """One feature service."""
        fs = await _run(self._get, request.project, "feature_service", request.name)
        return cv.feature_service_to_pb(request.project, fs)

    async def ListFeatureServices(self, request: pb.ListFeatureServicesRequest,
                                  context: grpc.aio.ServicerContext) -> pb.ListFeatureServicesResponse:
        """A page of feature services."""
        items, token = _page(await _run(self._list, request.project, "feature_service"), request.page_size,
                             request.page_token)
        return pb.ListFeatureServicesResponse(
            feature_services=[cv.feature_service_to_pb(request.project, s) for s in items], next_page_token=token)

    async def DeleteFeatureService(self, request: pb.DeleteFeatureServiceRequest,
                                   context: grpc.aio.ServicerContext) -> pb.DeleteFeatureServiceResponse:
        """Delete a feature service."""
        await _run(self._delete, request.project, "feature_service", request.name)
        return pb.DeleteFeatureServiceResponse()

    # -- online reads (hot path) ------------------------------------------------------------

    async def GetOnlineFeatures(self, request: pb.GetOnlineFeaturesRequest, context: grpc.aio.ServicerContext
                                ) -> pb.GetOnlineFeaturesResponse:
        """Latest values for a batch of entities: one pipelined Redis round trip, packed columns."""
        return await online_features(self.service, request)

    # -- writes -----------------------------------------------------------------------------

    def _push(self, request: pb.PushFeaturesRequest) -> pb.PushFeaturesResponse:
        caller = current_principal()
        if request.target == pb.PUSH_TARGET_ONLINE:
            raise InvalidArgument("online-only pushes are not supported: push ONLINE_AND_OFFLINE (the default) "
                                  "or OFFLINE; the offline store is the source of truth")
        rows = cv.rows_from_columns(cv.columns_from_pb(request.columns))
        if not rows:
            raise InvalidArgument("no rows given")
        ts_col = request.timestamp_column or "event_timestamp"
        key = request.idempotency_key or str(uuid.uuid4())
        ingestion = self.service.ingestion
        if request.target == pb.PUSH_TARGET_OFFLINE:
            result = ingestion.ingest(caller, request.project, request.feature_view, [rows_to_batch(rows)],
                                      timestamp_column=ts_col, source="push", receipt=key)
        else:
            result = ingestion.push(caller, request.project, request.feature_view, rows, event_id=key,
                                    timestamp_column=ts_col)
        if result is None:
            return pb.PushFeaturesResponse(duplicate=True)
        return pb.PushFeaturesResponse(rows_written=result.rows_written, rows_quarantined=result.rows_quarantined)

    async def PushFeatures(self, request: pb.PushFeaturesRequest, context: grpc.aio.ServicerContext
                           ) -> pb.PushFeaturesResponse:
        """Append rows offline and update them online, idempotently per idempotency key."""
        return await _run(self._push, request)

    async def IngestRows(self, request_iterator: AsyncIterator[pb.IngestRowsRequest],
                         context: grpc.aio.ServicerContext) -> pb.IngestRowsResponse:
        """Bulk ingest of a client stream, atomic per stream."""
        first: pb.IngestRowsRequest | None = None
        batches: list[pa.RecordBatch] = []
        async for msg in request_iterator:
            first = first or msg
            rows = cv.rows_from_columns(cv.columns_from_pb(msg.columns))
            if rows:
                batches.append(rows_to_batch(rows))
        if first is None or not first.project or not first.feature_view:
            raise InvalidArgument("the first message must name the project and the feature_view")
        result = await _run(self.service.ingestion.ingest, current_principal(), first.project, first.feature_view,
                            batches, timestamp_column=first.timestamp_column or "event_timestamp", source="grpc",
                            receipt=first.idempotency_key or None)
        if result is None:
            return pb.IngestRowsResponse()
        return pb.IngestRowsResponse(rows_written=result.rows_written, rows_flagged=result.rows_quarantined,
                                     quality_check_id=result.run_id)

    def _materialize(self, request: pb.MaterializeRangeRequest) -> pb.MaterializationJob:
        caller = current_principal()
        start = cv.ts_to_us(request.start_time) if request.HasField("start_time") else None
        end = cv.ts_to_us(request.end_time) if request.HasField("end_time") else None
        views = list(request.feature_views) or [
            v.name for v in self.service.registry.list_kind(caller, request.project, "feature_view")
            if isinstance(v, FeatureView) and v.online]
        if not views:
            raise InvalidArgument(f"project '{request.project}' has no online feature views to materialize")
        runs = []
        for view in views:
            run = self.service.materialization.materialize(caller, request.project, view, start_us=start,
                                                           end_us=end)
            runs.append(self.service.materialization.runs.materialization(request.project, run.id))
        return cv.job_to_pb(request.project, [r for r in runs if r is not None])

    async def MaterializeRange(self, request: pb.MaterializeRangeRequest, context: grpc.aio.ServicerContext
                               ) -> pb.MaterializationJob:
        """Materialize views (all online views when none are named) synchronously."""
        return await _run(self._materialize, request)

    def _job(self, request: pb.GetMaterializationJobRequest) -> pb.MaterializationJob:
        authorize(current_principal(), request.project, "features:read")
        run = self.service.materialization.runs.materialization(request.project, request.id)
        if run is None:
            raise NotFound(f"materialization '{request.id}' not found in project '{request.project}'")
        return cv.job_to_pb(request.project, [run])

    async def GetMaterializationJob(self, request: pb.GetMaterializationJobRequest,
                                    context: grpc.aio.ServicerContext) -> pb.MaterializationJob:
        """One materialization run."""
        return await _run(self._job, request)

    def _erase(self, request: pb.EraseEntityRequest) -> pb.EraseEntityResponse:
        keys = {name: cv.value_from_pb(v) for name, v in request.key.items()}
        record = self.service.compliance.erase(current_principal(), request.project, request.entity, keys)
        regions = sorted({self.service.registry.load(request.project, "feature_view", v.split("@")[0])
                          .residency_region for v in _erased_views(record)})
        return pb.EraseEntityResponse(
            erasure_id=record["id"], rows_erased=int(record["offline_rows"]) + int(record["online_keys"]),
            stores=[f"{kind}:{r}" for r in regions for kind in ("offline", "online")])

    async def EraseEntity(self, request: pb.EraseEntityRequest, context: grpc.aio.ServicerContext
                          ) -> pb.EraseEntityResponse:
        """Erase an entity's data in every store (audited)."""
        return await _run(self._erase, request)


def _erased_views(record: dict[str, Any]) -> list[str]:
    import json

    return list(json.loads(record["detail"]).get("views", []))


def grpc_registrar(service: FeatureStoreService) -> Callable[[grpc.aio.Server], str]:
    """A ``ServicerRegistrar`` for ``ServiceParts.grpc_registrars``."""

    def register(server: grpc.aio.Server) -> str:
        pb_grpc.add_FeatureStoreServiceServicer_to_server(FeatureStoreServicer(service), server)
        return SERVICE_NAME

    return register

"""gRPC servicer of ``mlp.registry.v1.RegistryService``: the same domain calls as REST, run in worker threads.

Every RPC of the contract: models, registration (RegisterVersion → upload sessions → client-streaming
UploadArtifact, resumable → CommitVersion), verified streaming downloads, aliases, change requests,
lineage and signing keys. Stored bytes that fail verification during a download end the stream
with DATA_LOSS (the same error is FAILED_PRECONDITION on unary calls and 409 on REST).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio.to_thread
import grpc

from mlp_core.auth import current_principal
from mlp_core.errors import Conflict, InvalidArgument, NotFound
from mlp_protos.mlp.registry.v1 import registry_pb2 as pb
from mlp_protos.mlp.registry.v1 import registry_pb2_grpc as pb_grpc
from mlp_registry.api import grpc_converters as conv
from mlp_registry.api.grpc_streams import ChunkBridge
from mlp_registry.domain.errors import IntegrityCheckFailed
from mlp_registry.domain.models import UploadState
from mlp_registry.domain.service import RegistryService

T = TypeVar("T")
_MAX_CHUNK = 4 << 20


async def _call(fn: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(fn, *args)


def _observe(task: asyncio.Future[Any]) -> None:
    """Mark a worker's error as seen when the RPC ended first (the worker's result then goes nowhere)."""
    if not task.cancelled():
        task.exception()


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    """Translates protobuf to domain calls; errors map through ``mlp_core``'s error interceptor."""

    def __init__(self, service: RegistryService) -> None:
        self.service = service

    def _model(self, project: str, name: str) -> pb.Model:
        p = current_principal()
        model = self.service.catalog.get_model(p, project, name)
        latest = self.service.catalog.list_versions(p, project, name, page_size=1).items
        aliases = {a.name: n for a, n in self.service.releases.list_aliases(p, project, name)}
        return conv.model_pb(model, latest[0].number if latest else 0, aliases)

    def _version(self, project: str, name: str, number: int) -> pb.ModelVersion:
        return conv.version_pb(*self.service.catalog.describe_version(current_principal(), project, name, number))

    async def CreateModel(self, request: pb.CreateModelRequest, context: grpc.aio.ServicerContext) -> pb.Model:
        """Create a model."""
        m = request.model
        p = current_principal()
        await _call(lambda: self.service.catalog.create_model(p, m.project, m.name, m.description, dict(m.labels)))
        return await _call(self._model, m.project, m.name)

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.Model:
        """One model with its latest version and aliases."""
        return await _call(self._model, request.project, request.name)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        """Models in pages, filtered by project and one label."""
        p = current_principal()
        label = next(iter(request.labels.items()), None)
        page = await _call(lambda: self.service.catalog.search_models(
            p, project=request.project or None, tag=label, page_size=request.page_size or 50,
            page_token=request.page_token or None))
        return pb.ListModelsResponse(models=[conv.model_pb(m) for m in page.items],
                                     next_page_token=page.next_page_token or "")

    async def GetVersion(self, request: pb.GetVersionRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelVersion:
        """One version with manifest, signature and encryption info."""
        return await _call(self._version, request.project, request.model, request.version)

    async def ListVersions(self, request: pb.ListVersionsRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListVersionsResponse:
        """Versions newest first, in pages."""
        p = current_principal()
        page = await _call(lambda: self.service.catalog.list_versions(
            p, request.project, request.model, include_archived=request.include_archived,
            page_size=request.page_size or 50, page_token=request.page_token or None))
        versions = [await _call(self._version, request.project, request.model, v.number) for v in page.items]
        return pb.ListVersionsResponse(versions=versions, next_page_token=page.next_page_token or "")

    async def DownloadArtifact(self, request: pb.DownloadArtifactRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DownloadArtifactResponse]:
        """A header with manifest and signature, then every requested file in verified chunks.

        Bytes that fail verification (signature, records, a segment's tag, the file digest) end the
        stream with DATA_LOSS: the stored artifact is corrupt and retrying will not help.
        """
        try:
            async for part in self._download(request):
                yield part
        except IntegrityCheckFailed as exc:
            await context.abort(grpc.StatusCode.DATA_LOSS, exc.detail)

    async def _download(self, request: pb.DownloadArtifactRequest) -> AsyncIterator[pb.DownloadArtifactResponse]:
        p = current_principal()
        number = request.version
        if request.alias:
            aliases = dict((a.name, n) for a, n in await _call(
                self.service.releases.list_aliases, p, request.project, request.model))
            if request.alias not in aliases:
                raise NotFound(f"model '{request.project}/{request.model}' has no alias '{request.alias}'")
            number = aliases[request.alias]
        version = await _call(self._version, request.project, request.model, number)
        yield pb.DownloadArtifactResponse(header=pb.DownloadHeader(version=number, manifest=version.manifest,
                                                                   signature=version.signature))
        paths = list(request.paths) or [f.path for f in version.manifest.files]
        size = min(max(request.chunk_size, 64 << 10), _MAX_CHUNK) if request.chunk_size else 1 << 20
        for path in paths:
            dl = await _call(self.service.downloads.open_file, p, request.project, request.model, number, path)
            offset = 0
            sentinel = object()
            while True:
                chunk = await _call(next, dl.chunks, sentinel)
                if chunk is sentinel:
                    break
                assert isinstance(chunk, bytes)
                for i in range(0, len(chunk), size):
                    piece = chunk[i:i + size]
                    yield pb.DownloadArtifactResponse(chunk=pb.FileChunk(path=path, offset=offset, data=piece))
                    offset += len(piece)

    async def RegisterVersion(self, request: pb.RegisterVersionRequest,
                              context: grpc.aio.ServicerContext) -> pb.RegisterVersionResponse:
        """Start a version: declared files in, one upload session per file out.

        With ``idempotency_key``, a retry returns the same version and sessions (ALREADY_EXISTS when
        the key was used for a different request).
        """
        p, draft = current_principal(), conv.draft_from_pb(request)
        project, name = request.version.project, request.version.model
        version, uploads = await _call(self.service.uploads.create_draft, p, project, name, draft,
                                       request.idempotency_key or None)
        model = await _call(self.service.catalog.get_model, p, project, name)
        return pb.RegisterVersionResponse(version=conv.version_pb(model, version, [], []),
                                          uploads=[conv.upload_pb(u) for u in uploads])

    async def UploadArtifact(self, request_iterator: AsyncIterator[pb.UploadArtifactRequest],
                             context: grpc.aio.ServicerContext) -> pb.UploadSession:
        """Append the streamed bytes to one session; returns the durable offset (or completion).

        The domain write runs in a worker thread fed through a bounded bridge. If the client goes
        away (cancel, deadline, disconnect: the request stream ends), the bridge is closed and the
        worker still makes its whole segments durable and releases the session's lease. A stream that
        stays open but sends nothing for ``stream_idle_timeout`` is ended the same way and answered
        ABORTED with the offset to resume from (some clients' cancel never reaches the server).
        """
        p = current_principal()
        stream = aiter(request_iterator)
        first = await anext(stream, None)
        if first is None or first.WhichOneof("part") != "start" or not first.start.upload_id:
            raise InvalidArgument("the first message of UploadArtifact must be `start` with the upload_id and "
                                  "the offset to write at (see RegisterVersion / GetUploadSession)")
        loop = asyncio.get_running_loop()
        bridge = ChunkBridge(loop)
        # Should a finished or cancelled call not wake a pending read of the request stream, its
        # completion still ends the bridge, so the worker keeps what it made durable.
        context.add_done_callback(lambda _: loop.call_soon_threadsafe(bridge.close))
        worker = asyncio.ensure_future(_call(self.service.uploads.write, p, first.start.upload_id,
                                             first.start.offset, bridge.chunks()))
        worker.add_done_callback(lambda _: bridge.abandon())
        worker.add_done_callback(_observe)
        idle_s = self.service.uploads.stream_idle_timeout.total_seconds()
        idle = False
        try:
            async with asyncio.timeout_at(loop.time() + idle_s) as waiting:  # only while waiting for the client
                async for message in stream:
                    waiting.reschedule(None)
                    if worker.done():
                        break
                    if message.WhichOneof("part") != "data":
                        raise InvalidArgument("after `start`, every UploadArtifact message must carry `data`")
                    await bridge.put(message.data)
                    waiting.reschedule(loop.time() + idle_s)
        except TimeoutError:
            idle = True
        finally:
            bridge.close()
        session = await worker
        if idle and session.state is not UploadState.COMPLETE:
            raise Conflict(f"upload {session.id}: no data for {idle_s:g} s, the stream was ended; "
                           f"{session.offset} bytes are durable, resume from there")
        return conv.upload_pb(session)

    async def GetUploadSession(self, request: pb.GetUploadSessionRequest,
                               context: grpc.aio.ServicerContext) -> pb.UploadSession:
        """Where to resume an upload."""
        return conv.upload_pb(await _call(self.service.uploads.get_upload, current_principal(), request.upload_id))

    async def CommitVersion(self, request: pb.CommitVersionRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelVersion:
        """Sign and register a fully uploaded version."""
        await _call(self.service.uploads.commit, current_principal(), request.project, request.model,
                    request.version)
        return await _call(self._version, request.project, request.model, request.version)

    async def GetLineage(self, request: pb.GetLineageRequest, context: grpc.aio.ServicerContext) -> pb.LineageGraph:
        """The lineage graph around a model version, feature view or dataset."""
        direction = request.direction or pb.LINEAGE_DIRECTION_UPSTREAM
        graph = await _call(lambda: self.service.lineage.graph(
            current_principal(), conv.node_from_pb(request.subject, request.project),
            upstream=direction in (pb.LINEAGE_DIRECTION_UPSTREAM, pb.LINEAGE_DIRECTION_BOTH),
            downstream=direction in (pb.LINEAGE_DIRECTION_DOWNSTREAM, pb.LINEAGE_DIRECTION_BOTH),
            depth=request.depth))
        return conv.lineage_pb(graph)

    async def _cr(self, project: str, cr_id: str) -> pb.ChangeRequest:
        p = current_principal()
        cr, model, version = await _call(self.service.releases.get_change_request, p, cr_id)
        if project and model.project != project:
            raise NotFound(f"change request {cr_id!r} does not exist in project '{project}'")
        previous = 0
        if cr.previous_version_id:
            prev = [v for v in (await _call(lambda: self.service.catalog.list_versions(
                p, model.project, model.name, page_size=500))).items if v.id == cr.previous_version_id]
            previous = prev[0].number if prev else 0
        return conv.change_request_pb(cr, model, version.number, previous)

    async def CreateChangeRequest(self, request: pb.CreateChangeRequestRequest,
                                  context: grpc.aio.ServicerContext) -> pb.ChangeRequest:
        """Open a change request to move an alias.

        With ``idempotency_key``, a retry returns the same change request (ALREADY_EXISTS when the key
        was used for a different request: another kind, alias, version, reason or origin).
        """
        p = current_principal()
        create = functools.partial(self.service.releases.create_change_request,
                                   requested_kind=conv.change_kind_from_pb(request.kind),
                                   origin=conv.ref_fields(request.origin))
        cr = await _call(create, p, request.project, request.model, request.alias, request.version, request.reason,
                         request.idempotency_key or None)
        return await self._cr(request.project, cr.id)

    async def GetChangeRequest(self, request: pb.GetChangeRequestRequest,
                               context: grpc.aio.ServicerContext) -> pb.ChangeRequest:
        """One change request."""
        return await self._cr(request.project, request.id)

    async def ListChangeRequests(self, request: pb.ListChangeRequestsRequest,
                                 context: grpc.aio.ServicerContext) -> pb.ListChangeRequestsResponse:
        """Change requests of a model."""
        p = current_principal()
        state = conv.CR_STATE_FROM_PB.get(request.state)
        found = await _call(self.service.releases.list_change_requests, p, request.project, request.model, state)
        return pb.ListChangeRequestsResponse(change_requests=[await self._cr(request.project, cr.id)
                                                              for cr, _ in found])

    async def ApproveChangeRequest(self, request: pb.ApproveChangeRequestRequest,
                                   context: grpc.aio.ServicerContext) -> pb.ChangeRequest:
        """Approve (four eyes)."""
        await self._cr(request.project, request.id)
        await _call(self.service.releases.approve, current_principal(), request.id, request.comment)
        return await self._cr(request.project, request.id)

    async def RejectChangeRequest(self, request: pb.RejectChangeRequestRequest,
                                  context: grpc.aio.ServicerContext) -> pb.ChangeRequest:
        """Reject or withdraw."""
        await self._cr(request.project, request.id)
        await _call(self.service.releases.reject, current_principal(), request.id, request.comment)
        return await self._cr(request.project, request.id)

    async def ApplyChangeRequest(self, request: pb.ApplyChangeRequestRequest,
                                 context: grpc.aio.ServicerContext) -> pb.ChangeRequest:
        """Apply an approved request."""
        await self._cr(request.project, request.id)
        await _call(self.service.releases.apply, current_principal(), request.id)
        return await self._cr(request.project, request.id)

    async def _alias(self, project: str, model: str, alias: str) -> tuple[Any, int]:
        p = current_principal()
        for a, n in await _call(self.service.releases.list_aliases, p, project, model):
            if a.name == alias:
                return a, n
        raise NotFound(f"model '{project}/{model}' has no alias '{alias}'")

    async def GetAlias(self, request: pb.GetAliasRequest, context: grpc.aio.ServicerContext) -> pb.Alias:
        """Where an alias points."""
        alias, number = await self._alias(request.project, request.model, request.alias)
        model = await _call(self.service.catalog.get_model, current_principal(), request.project, request.model)
        return conv.alias_pb(model, alias, number)

    async def ResolveAlias(self, request: pb.ResolveAliasRequest,
                           context: grpc.aio.ServicerContext) -> pb.ModelVersion:
        """The version an alias points at."""
        _, number = await self._alias(request.project, request.model, request.alias)
        return await _call(self._version, request.project, request.model, number)

    async def GetSigningKeys(self, request: pb.GetSigningKeysRequest,
                             context: grpc.aio.ServicerContext) -> pb.GetSigningKeysResponse:
        """Every published verification key."""
        keys = await _call(self.service.downloads.public_keys)
        return pb.GetSigningKeysResponse(keys=[pb.SigningKey(key_id=k, algorithm="ed25519", public_key_pem=pem)
                                               for k, pem in keys.items()])


def registry_registrar(service: RegistryService) -> Callable[[grpc.aio.Server], str]:
    """Adds the servicer to a server; returns the full service name (for health and reflection)."""

    def register(server: grpc.aio.Server) -> str:
        pb_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(service), server)
        return pb.DESCRIPTOR.services_by_name["RegistryService"].full_name

    return register

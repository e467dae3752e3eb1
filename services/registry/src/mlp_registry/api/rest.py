"""REST API of the registry: models, versions, resumable uploads, verified downloads, keys, lineage.

Aliases and change requests are in ``rest_releases``; ``build_router`` joins both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Annotated

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from mlp_core.auth import CurrentPrincipal, Principal, require_scope
from mlp_core.errors import Conflict, InvalidArgument
from mlp_registry.api import converters as conv
from mlp_registry.api import schemas as s
from mlp_registry.api.rest_releases import add_release_routes
from mlp_registry.domain.catalog import MetadataUpdate
from mlp_registry.domain.models import FileSpec, UploadState
from mlp_registry.domain.service import RegistryService
from mlp_registry.domain.uploads import VersionDraft

PREFIX = "/api/v1/registry"
Reader = Annotated[Principal, Depends(require_scope("registry:read"))]
Writer = Annotated[Principal, Depends(require_scope("registry:write"))]


def _tag(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    key, sep, val = value.partition(":")
    if not sep or not key:
        raise InvalidArgument("tag filter must look like 'key:value'")
    return key, val


def build_router(service: RegistryService) -> APIRouter:
    """All registry routes under ``/api/v1/registry``, calling ``service``."""
    router = APIRouter(prefix=PREFIX, tags=["registry"])
    model_path = "/projects/{project}/models/{name}"
    version_path = model_path + "/versions/{number}"

    @router.get("/signing-keys", response_model=list[s.SigningKeyRead], summary="Published verification keys")
    def signing_keys(_: Reader) -> list[s.SigningKeyRead]:
        return [s.SigningKeyRead(key_id=k, public_key_pem=pem)
                for k, pem in service.downloads.public_keys().items()]

    @router.post("/projects/{project}/models", response_model=s.ModelRead, status_code=status.HTTP_201_CREATED)
    def create_model(project: str, body: s.ModelCreate, principal: Writer) -> s.ModelRead:
        return conv.model_read(service.catalog.create_model(
            principal, project, body.name, body.description, body.tags, body.thresholds))

    @router.get("/models", response_model=s.ModelPage, summary="Search models")
    def search_models(principal: Reader, project: str | None = None, q: str | None = None,
                      tag: str | None = Query(None, description="key:value"), page_size: int = 50,
                      page_token: str | None = None) -> s.ModelPage:
        page = service.catalog.search_models(principal, project=project, text=q, tag=_tag(tag),
                                             page_size=page_size, page_token=page_token)
        return s.ModelPage(items=[conv.model_read(m) for m in page.items], next_page_token=page.next_page_token)

    @router.get(model_path, response_model=s.ModelRead)
    def get_model(project: str, name: str, principal: Reader) -> s.ModelRead:
        return conv.model_read(service.catalog.get_model(principal, project, name))

    @router.patch(model_path, response_model=s.ModelRead)
    def update_model(project: str, name: str, body: s.ModelUpdate, principal: Writer) -> s.ModelRead:
        return conv.model_read(service.catalog.update_model(
            principal, project, name, MetadataUpdate(body.description, body.tags), body.thresholds))

    @router.post(model_path + "/versions", response_model=s.DraftRead, status_code=status.HTTP_201_CREATED,
                 summary="Start a version: declare files, get upload sessions")
    def create_version(project: str, name: str, body: s.VersionCreate, principal: Writer,
                       idempotency_key: Annotated[str | None, Header(
                           alias="Idempotency-Key", max_length=128,
                           description="a retry with the same key returns the same draft (409 if the body "
                                       "differs)")] = None) -> s.DraftRead:
        draft = VersionDraft(
            files=[FileSpec(f.path, f.size, f.sha256) for f in body.files], framework=body.framework,
            metrics=body.metrics, params=body.params, input_schema=body.input_schema,
            output_schema=body.output_schema, model_card=body.model_card, attributes=body.attributes,
            lineage=conv.lineage_from(body.lineage), description=body.description, tags=body.tags)
        version, uploads = service.uploads.create_draft(principal, project, name, draft, idempotency_key)
        model = service.catalog.get_model(principal, project, name)
        return s.DraftRead(version=conv.version_read(model, version),
                           uploads=[conv.upload_read(u) for u in uploads])

    @router.get(model_path + "/versions", response_model=s.VersionPage)
    def list_versions(project: str, name: str, principal: Reader, include_archived: bool = True,
                      page_size: int = 50, page_token: str | None = None) -> s.VersionPage:
        page = service.catalog.list_versions(principal, project, name, include_archived=include_archived,
                                             page_size=page_size, page_token=page_token)
        model = service.catalog.get_model(principal, project, name)
        return s.VersionPage(items=[conv.version_read(model, v) for v in page.items],
                             next_page_token=page.next_page_token)

    @router.get(version_path, response_model=s.VersionRead)
    def get_version(project: str, name: str, number: int, principal: Reader,
                    include_drafts: bool = False) -> s.VersionRead:
        model, version = service.catalog.get_version(principal, project, name, number,
                                                     include_drafts=include_drafts)
        return conv.version_read(model, version)

    @router.patch(version_path, response_model=s.VersionRead)
    def update_version(project: str, name: str, number: int, body: s.VersionUpdate,
                       principal: Writer) -> s.VersionRead:
        version = service.catalog.update_version(principal, project, name, number,
                                                 MetadataUpdate(body.description, body.tags))
        return conv.version_read(service.catalog.get_model(principal, project, name), version)

    @router.post(version_path + "/commit", response_model=s.VersionRead, summary="Register a fully uploaded draft")
    def commit_version(project: str, name: str, number: int, principal: Writer) -> s.VersionRead:
        version = service.uploads.commit(principal, project, name, number)
        return conv.version_read(service.catalog.get_model(principal, project, name), version)

    @router.post(version_path + "/abort", status_code=status.HTTP_204_NO_CONTENT)
    def abort_version(project: str, name: str, number: int, principal: Writer) -> Response:
        service.uploads.abort(principal, project, name, number)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.post(version_path + "/archive", response_model=s.VersionRead)
    def archive_version(project: str, name: str, number: int, principal: Writer) -> s.VersionRead:
        version = service.housekeeping.archive(principal, project, name, number)
        return conv.version_read(service.catalog.get_model(principal, project, name), version)

    @router.post(version_path + "/restore", response_model=s.VersionRead)
    def restore_version(project: str, name: str, number: int, principal: Writer) -> s.VersionRead:
        version = service.housekeeping.restore(principal, project, name, number)
        return conv.version_read(service.catalog.get_model(principal, project, name), version)

    @router.delete(version_path, status_code=status.HTTP_204_NO_CONTENT)
    def delete_version(project: str, name: str, number: int, principal: Writer) -> Response:
        service.housekeeping.delete(principal, project, name, number)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.get(version_path + "/manifest", response_model=s.SignedManifestRead)
    def get_manifest(project: str, name: str, number: int, principal: Reader) -> s.SignedManifestRead:
        signed = service.downloads.manifest(principal, project, name, number)
        return s.SignedManifestRead(manifest_digest=signed.manifest_digest, envelope=signed.envelope,
                                    manifest=signed.manifest)

    @router.get(version_path + "/files/{path:path}", summary="Download one file, verified while it streams")
    def download(project: str, name: str, number: int, path: str, principal: Reader) -> StreamingResponse:
        dl = service.downloads.open_file(principal, project, name, number, path)
        return StreamingResponse(dl.chunks, media_type="application/octet-stream", headers={
            "Content-Length": str(dl.file.size), "Digest": f"sha-256={dl.file.sha256}",
            "X-Content-SHA256": dl.file.sha256})

    @router.post(version_path + "/verify", summary="Read and check every file of a version")
    def verify(project: str, name: str, number: int, principal: Reader) -> dict[str, object]:
        return service.downloads.verify(principal, project, name, number)

    @router.get(version_path + "/lineage", response_model=s.LineageBody)
    def lineage(project: str, name: str, number: int, principal: Reader) -> s.LineageBody:
        return conv.lineage_body(service.catalog.lineage(principal, project, name, number))

    @router.get("/lineage/versions", response_model=list[s.VersionRead],
                summary="Versions that used a feature view or training set")
    def versions_using(principal: Reader, feature_view: str | None = None,
                       training_set_digest: str | None = None) -> list[s.VersionRead]:
        found = service.catalog.versions_using(principal, feature_view=feature_view,
                                               training_set_digest=training_set_digest)
        return [conv.version_read(m, v) for m, v in found]

    @router.get("/uploads/{upload_id}", response_model=s.UploadRead, summary="Where to resume an upload")
    def get_upload(upload_id: str, principal: Writer, response: Response) -> s.UploadRead:
        upload = service.uploads.get_upload(principal, upload_id)
        response.headers["Upload-Offset"] = str(upload.offset)
        return conv.upload_read(upload)

    @router.put("/uploads/{upload_id}", response_model=s.UploadRead,
                summary="Append bytes at Upload-Offset (streamed; resumable)")
    async def put_upload(upload_id: str, request: Request, principal: Writer, response: Response,
                         upload_offset: Annotated[int, Header(ge=0)] = 0) -> s.UploadRead:
        idle_s = service.uploads.stream_idle_timeout.total_seconds()
        body = _SyncBody(request.stream(), idle_s)
        upload = await anyio.to_thread.run_sync(
            lambda: service.uploads.write(principal, upload_id, upload_offset, body.chunks()))
        if body.idle and upload.state is not UploadState.COMPLETE:
            raise Conflict(f"upload {upload_id}: no body bytes for {idle_s:g} s, the request was ended; "
                           f"{upload.offset} bytes are durable, resume from there",
                           headers={"Upload-Offset": str(upload.offset)})
        response.headers["Upload-Offset"] = str(upload.offset)
        return conv.upload_read(upload)

    @router.get("/projects/{project}/audit", summary="Audit trail of a project or model")
    def audit(project: str, principal: Reader, model: str | None = None, limit: int = 100) -> list[dict[str, object]]:
        return [{"id": r.id, "at": r.at.isoformat(), "actor": r.actor, "action": r.action,
                 "subject": r.subject, "detail": r.detail}
                for r in service.catalog.audit_trail(principal, project, model, limit)]

    @router.post("/admin/rotate-keys", summary="New key-encryption key; re-wrap every data key (admin)")
    def rotate_keys(principal: CurrentPrincipal) -> dict[str, object]:
        return service.downloads.rotate_keys(principal)

    @router.post("/admin/gc", summary="Delete unreferenced artifacts (admin)")
    def gc(principal: CurrentPrincipal) -> dict[str, int]:
        report = service.housekeeping.collect_garbage(principal)
        return {"objects_deleted": report.objects_deleted, "staging_deleted": report.staging_deleted,
                "uploads_expired": report.uploads_expired}

    add_release_routes(router, service, model_path)
    return router


class _SyncBody:
    """The request body as a blocking iterator for a worker thread.

    A client that goes away ends it (the worker keeps the whole segments and releases the lease);
    so does a body that sends nothing for ``idle_s`` (then ``idle`` is set).
    """

    def __init__(self, stream: AsyncIterator[bytes], idle_s: float) -> None:
        self._stream = stream
        self._idle_s = idle_s
        self.idle = False

    async def _next(self) -> bytes:
        with anyio.fail_after(self._idle_s):
            return await self._stream.__anext__()

    def chunks(self) -> Iterator[bytes]:
        """The body's chunks (worker-thread side)."""
        while True:
            try:
                chunk: bytes = anyio.from_thread.run(self._next)
            except (StopAsyncIteration, ClientDisconnect):
                return
            except TimeoutError:
                self.idle = True
                return
            if chunk:
                yield chunk

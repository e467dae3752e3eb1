"""REST routes for aliases and change requests."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response, status

from mlp_core.auth import CurrentPrincipal, Principal, require_scope
from mlp_registry.api import converters as conv
from mlp_registry.api import schemas as s
from mlp_registry.domain.models import ChangeState
from mlp_registry.domain.service import RegistryService

Reader = Annotated[Principal, Depends(require_scope("registry:read"))]
Writer = Annotated[Principal, Depends(require_scope("registry:write"))]


def add_release_routes(router: APIRouter, service: RegistryService, model_path: str) -> None:
    """Add alias and change-request routes to ``router``."""

    def cr_read(principal: Principal, cr_id: str) -> s.ChangeRequestRead:
        cr, model, version = service.releases.get_change_request(principal, cr_id)
        return conv.change_request_read(cr, model, version.number)

    @router.get(model_path + "/aliases", response_model=list[s.AliasRead])
    def list_aliases(project: str, name: str, principal: Reader) -> list[s.AliasRead]:
        return [conv.alias_read(a, n) for a, n in service.releases.list_aliases(principal, project, name)]

    @router.put(model_path + "/aliases/{alias}", response_model=s.AliasRead,
                summary="Point an unprotected alias at a version")
    def set_alias(project: str, name: str, alias: str, body: s.AliasSet, principal: Writer) -> s.AliasRead:
        return conv.alias_read(service.releases.set_alias(principal, project, name, alias, body.version),
                               body.version)

    @router.delete(model_path + "/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT)
    def delete_alias(project: str, name: str, alias: str, principal: Writer) -> Response:
        service.releases.delete_alias(principal, project, name, alias)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.post(model_path + "/change-requests", response_model=s.ChangeRequestRead,
                 status_code=status.HTTP_201_CREATED, summary="Ask to move a (protected) alias")
    def create_cr(project: str, name: str, body: s.ChangeRequestCreate, principal: Writer,
                  idempotency_key: Annotated[str | None, Header(
                      alias="Idempotency-Key", max_length=128,
                      description="a retry with the same key returns the same change request (409 if the "
                                  "body differs)")] = None) -> s.ChangeRequestRead:
        cr = service.releases.create_change_request(principal, project, name, body.alias, body.version, body.reason,
                                                    idempotency_key)
        return cr_read(principal, cr.id)

    @router.get(model_path + "/change-requests", response_model=list[s.ChangeRequestRead])
    def list_crs(project: str, name: str, principal: Reader,
                 state: ChangeState | None = None) -> list[s.ChangeRequestRead]:
        model = service.catalog.get_model(principal, project, name)
        return [conv.change_request_read(cr, model, n)
                for cr, n in service.releases.list_change_requests(principal, project, name, state)]

    @router.get("/change-requests/{cr_id}", response_model=s.ChangeRequestRead)
    def get_cr(cr_id: str, principal: Reader) -> s.ChangeRequestRead:
        return cr_read(principal, cr_id)

    @router.post("/change-requests/{cr_id}/approve", response_model=s.ChangeRequestRead)
    def approve(cr_id: str, body: s.Decision, principal: CurrentPrincipal) -> s.ChangeRequestRead:
        service.releases.approve(principal, cr_id, body.comment)
        return cr_read(principal, cr_id)

    @router.post("/change-requests/{cr_id}/reject", response_model=s.ChangeRequestRead)
    def reject(cr_id: str, body: s.Decision, principal: CurrentPrincipal) -> s.ChangeRequestRead:
        service.releases.reject(principal, cr_id, body.comment)
        return cr_read(principal, cr_id)

    @router.post("/change-requests/{cr_id}/apply", response_model=s.ChangeRequestRead)
    def apply(cr_id: str, principal: Writer) -> s.ChangeRequestRead:
        service.releases.apply(principal, cr_id)
        return cr_read(principal, cr_id)

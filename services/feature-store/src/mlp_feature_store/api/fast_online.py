"""Online reads on the feature store's fast port (``MLP_FEATURE_STORE_ONLINE_PORT``), REST and gRPC.

REST: the same request, checks and answer as ``POST /api/v1/feature-store/projects/{project}/online-features``
on the app (same body model, token checks, domain call, JSON and problem+json), served by
``mlp_core.edge`` without the ASGI stack. gRPC (h2c on the same port, ``mlp_core.grpc_edge``):
``FeatureStoreService/GetOnlineFeatures`` with the gRPC server's token check, domain call and status
codes. This is the hot path of enterprise apps that read features per prediction. Every other path
on that port is a 404 problem (REST) or UNIMPLEMENTED (gRPC); the main ports serve the whole API.
"""

from __future__ import annotations

import json
import logging

import orjson
from opentelemetry import context as otel_context
from pydantic import ValidationError

from mlp_core.auth import TokenVerifier
from mlp_core.auth.grpc import verify_authorization
from mlp_core.auth.principal import reset_current_principal, set_current_principal
from mlp_core.auth.rest import authenticate
from mlp_core.edge import Connection, Handler, Request, response_head
from mlp_core.errors import DomainError
from mlp_core.grpc import decode_request
from mlp_core.grpc_edge import GrpcCall, GrpcHandler
from mlp_core.http import validation_problem
from mlp_core.telemetry import current_trace_id, incoming_context
from mlp_feature_store.api.grpc import online_features_bytes
from mlp_feature_store.api.rest_io import OnlineIn, online_json
from mlp_feature_store.domain.service import FeatureStoreService
from mlp_protos.mlp.featurestore.v1 import featurestore_pb2 as pb

log = logging.getLogger(__name__)

PREFIX = "/api/v1/feature-store/projects/"
SUFFIX = "/online-features"
TEMPLATE = PREFIX + "{project}" + SUFFIX
_TRACE_KEYS = frozenset({b"traceparent", b"tracestate", b"baggage"})
_JSON = [(b"content-type", b"application/json")]
GET_ONLINE_FEATURES = f"/{pb.DESCRIPTOR.services_by_name['FeatureStoreService'].full_name}/GetOnlineFeatures"


class RequestInvalid(DomainError):
    """The body does not match the schema (FastAPI's 422 ``validation-error`` problem, same shape)."""

    status, title, slug = 422, "Request validation failed", "validation-error"


class Unexpected(DomainError):
    """Anything else: logged, and answered without details."""


class OnlineRoutes:
    """The fast port's router: only ``POST …/projects/{project}/online-features``."""

    def __init__(self, service: FeatureStoreService, verifier: TokenVerifier) -> None:
        self.service = service
        self.verifier = verifier
        self._route: tuple[Handler, str] = (self.handle, TEMPLATE)

    def __call__(self, method: str, path: str) -> tuple[Handler, str] | None:
        if method == "POST" and path.startswith(PREFIX) and path.endswith(SUFFIX):
            project = path[len(PREFIX):-len(SUFFIX)]
            if project and "/" not in project:
                return self._route
        return None

    async def handle(self, request: Request, conn: Connection) -> int:
        """Authenticate, validate, read, answer; every failure is problem+json."""
        path = request.path
        project = path[len(PREFIX):-len(SUFFIX)]
        carrier = {k.decode(): v for k, v in request.headers if k in _TRACE_KEYS}
        context_token = otel_context.attach(incoming_context(carrier))
        principal_token = None
        try:
            principal = await authenticate(self.verifier, request.query, request.headers)
            principal_token = set_current_principal(principal)
            body = _parse(request.body_bytes())
            result = await self.service.retrieval.online_async(
                principal, project, body.entities, features=body.features, feature_service=body.feature_service,
                max_staleness_s=body.max_staleness_s)
            payload = orjson.dumps(online_json(result))
            conn.send(response_head(200, _JSON, length=len(payload), close=not request.keep) + payload)
            return 200
        except DomainError as exc:
            return conn.problem(exc, path, current_trace_id(), request.keep)
        except Exception:  # never a traceback to the client
            log.exception("unhandled error on POST %s", path)
            return conn.problem(Unexpected("The server failed to handle this request; it has been logged."),
                                path, current_trace_id(), request.keep)
        finally:
            if principal_token is not None:
                reset_current_principal(principal_token)
            otel_context.detach(context_token)


class OnlineGrpc:
    """``GetOnlineFeatures`` over gRPC on the fast port: token, decode, read, encode."""

    def __init__(self, service: FeatureStoreService, verifier: TokenVerifier) -> None:
        self.service = service
        self.verifier = verifier

    def routes(self) -> dict[str, GrpcHandler]:
        return {GET_ONLINE_FEATURES: self.get_online_features}

    async def get_online_features(self, call: GrpcCall) -> bytes:
        # In the grpc.aio server's order: the token (AuthInterceptor), then the message, then the call.
        principal = await verify_authorization(
            self.verifier, [v.decode("latin-1") for k, v in call.metadata if k == b"authorization"])
        request = decode_request(pb.GetOnlineFeaturesRequest.FromString, call.message)
        token = set_current_principal(principal)
        try:
            return await online_features_bytes(self.service, request)
        finally:
            reset_current_principal(token)


def _parse(body: bytes) -> OnlineIn:
    try:
        return OnlineIn.model_validate_json(body)
    except ValidationError as exc:
        if any(err.get("type") == "json_invalid" for err in exc.errors()):
            try:  # FastAPI reports where Python's decoder stopped
                json.loads(body)
            except ValueError as bad:
                detail, errors = validation_problem(
                    [{"loc": (getattr(bad, "pos", 0),), "msg": "JSON decode error", "type": "json_invalid"}], ("body",))
                raise RequestInvalid(detail, errors=errors) from None
        detail, errors = validation_problem(exc.errors(), loc_prefix=("body",))
        raise RequestInvalid(detail, errors=errors) from None


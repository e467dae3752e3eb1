"""One OpenAPI document for the whole public REST API, merged from every upstream's /openapi.json."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from typing import Any

import httpx

log = logging.getLogger(__name__)

_MAX_DOC_BYTES = 5 * 1024 * 1024
_BEARER = {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (at+jwt)"}}


class OpenApiAggregator:
    """Fetches each upstream's document, keeps its ``/api/v1/<service>`` paths, merges components.

    The merged document is cached; ``refresh()`` runs at start-up and every ``refresh_s`` seconds.
    An upstream that does not answer keeps its last good contribution.
    """

    def __init__(self, upstreams: dict[str, str], base: Callable[[], dict[str, Any]], *,
                 refresh_s: float = 300.0, http_client: httpx.AsyncClient | None = None) -> None:
        self.upstreams = upstreams
        self._base = base
        self.refresh_s = refresh_s
        self._client = http_client or httpx.AsyncClient(timeout=5.0, follow_redirects=False)
        self._parts: dict[str, dict[str, Any]] = {}
        self._merged: dict[str, Any] | None = None

    async def refresh(self) -> None:
        """Fetch every upstream document once (concurrently)."""
        results = await asyncio.gather(*(self._fetch(s, url) for s, url in self.upstreams.items()))
        for service, doc in zip(self.upstreams, results, strict=True):
            if doc is not None:
                self._parts[service] = doc
        self._merged = None

    async def run(self, stop: asyncio.Event) -> None:
        """Background task: refresh now and then periodically."""
        while not stop.is_set():
            await self.refresh()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.refresh_s)
            except TimeoutError:
                pass

    def document(self) -> dict[str, Any]:
        """The merged document (FastAPI's ``app.openapi`` replacement)."""
        if self._merged is None:
            self._merged = merge(self._base(), self._parts)
        return self._merged

    async def _fetch(self, service: str, base_url: str) -> dict[str, Any] | None:
        try:
            response = await self._client.get(base_url.rstrip("/") + "/openapi.json")
            if response.status_code != 200 or len(response.content) > _MAX_DOC_BYTES:
                return None
            doc = response.json()
        except (httpx.HTTPError, ValueError):
            log.info("no OpenAPI document from %s yet", service)
            return None
        return doc if isinstance(doc, dict) else None

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()


def merge(base: dict[str, Any], parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``base`` plus each service's own ``/api/v1/<service>`` (and serving's ``/v2``) paths and schemas.

    Component names that collide with a different definition are kept from the first service and
    the collision is logged; our services use distinct model names.
    """
    merged = copy.deepcopy(base)
    paths: dict[str, Any] = merged.setdefault("paths", {})
    components: dict[str, Any] = merged.setdefault("components", {})
    for service in sorted(parts):
        doc = parts[service]
        prefixes = (f"/api/v1/{service}/",) + (("/v2",) if service == "serving" else ())
        for path, item in (doc.get("paths") or {}).items():
            if isinstance(path, str) and path.startswith(prefixes) and isinstance(item, dict):
                paths.setdefault(path, item)
        for kind, entries in (doc.get("components") or {}).items():
            if not isinstance(entries, dict):
                continue
            target = components.setdefault(kind, {})
            for name, schema in entries.items():
                if name in target and target[name] != schema:
                    log.warning("OpenAPI component %s/%s differs between services; keeping the first", kind, name)
                    continue
                target[name] = schema
    components.setdefault("securitySchemes", {}).update(_BEARER)
    merged["security"] = [{"bearerAuth": []}]
    return merged

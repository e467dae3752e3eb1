"""A small HTTP client for the platform's REST API through the gateway, with tokens and clear errors."""

from __future__ import annotations

import time
from typing import Any

import httpx


class ApiError(Exception):
    """A problem+json answer from the platform, with its status and detail."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.detail = detail


class PlatformClient:
    """Calls ``/api/v1/...`` on the gateway with a bearer token; retries 429/503 with backoff."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 60.0, retries: int = 3) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout,
                                 headers={"Authorization": f"Bearer {token}"})
        self.retries = retries

    def request(self, method: str, path: str, *, expect: tuple[int, ...] = (200, 201, 204),
                **kwargs: Any) -> httpx.Response:
        """Send a request; raise ``ApiError`` unless the status is one of ``expect``."""
        for attempt in range(self.retries + 1):
            resp = self.http.request(method, path, **kwargs)
            if resp.status_code in (429, 503) and attempt < self.retries:
                time.sleep(min(float(resp.headers.get("retry-after", 0.5 * 2**attempt)), 5.0))
                continue
            break
        if resp.status_code not in expect:
            try:
                body = resp.json()
                raise ApiError(resp.status_code, str(body.get("title", "")), str(body.get("detail", resp.text)))
            except ValueError:
                raise ApiError(resp.status_code, "error", resp.text[:300]) from None
        return resp

    def get(self, path: str, **kwargs: Any) -> Any:
        """GET and decode JSON."""
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, **kwargs: Any) -> Any:
        """POST and decode JSON (None for 204)."""
        resp = self.request("POST", path, **kwargs)
        return resp.json() if resp.content else None

    def status_of(self, method: str, path: str, **kwargs: Any) -> int:
        """Only the status code of a call (for showing refusals)."""
        return self.http.request(method, path, **kwargs).status_code

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

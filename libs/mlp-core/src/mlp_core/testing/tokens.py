"""A test OIDC issuer: real discovery + JWKS over local HTTP, and minting of good and bad tokens.

Use from any package's tests with ``pytest_plugins = ["mlp_core.testing.tokens"]`` and the
``test_issuer`` fixture::

    async def test_x(test_issuer):
        token = test_issuer.mint(scope="features:read", projects=["default"])
        principal = await test_issuer.verifier().verify(token)

``test_issuer.stop()`` simulates the identity provider going down; ``start()`` brings it back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from joserfc import jwk
from joserfc.jws import JWSRegistry

from mlp_core.auth.jwks import JwksCache
from mlp_core.auth.verifier import TokenVerifier

SigningKey = jwk.RSAKey | jwk.ECKey | jwk.OKPKey
_DEFAULT_ALG = "ES256"


def b64url(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def generate_key(alg: str = _DEFAULT_ALG) -> SigningKey:
    """A fresh private key for ``alg`` with ``kid`` set to its RFC 7638 thumbprint."""
    key: SigningKey
    if alg.startswith(("RS", "PS")):
        key = jwk.RSAKey.generate_key(2048, auto_kid=True)
    elif alg == "EdDSA":
        key = jwk.OKPKey.generate_key("Ed25519", auto_kid=True)
    else:
        key = jwk.ECKey.generate_key({"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg], auto_kid=True)
    return key


def sign_compact(header: dict[str, Any], payload: dict[str, Any] | bytes, key: SigningKey | bytes | None) -> str:
    """Sign exactly the given header and payload with ``header["alg"]`` (no checks, for bad tokens too).

    ``key`` is a joserfc key, raw bytes for HS* (an HMAC secret), or ``None`` for ``alg: none``.
    """
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(body)}".encode()
    alg = header.get("alg")
    if key is None:
        signature = b""
    elif isinstance(key, bytes):
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[str(alg)]
        signature = hmac.new(key, signing_input, digest).digest()
    else:
        signature = JWSRegistry.algorithms[str(alg)].sign(signing_input, key)  # type: ignore[arg-type]
    return f"{signing_input.decode()}.{b64url(signature)}"


@dataclass
class _Published:
    alg: str
    key: SigningKey


class TestIssuer:
    """An OIDC issuer for tests: serves discovery and JWKS on 127.0.0.1 and mints tokens."""

    __test__ = False  # not a pytest test class

    def __init__(self, *, audience: str = "mlp", alg: str = _DEFAULT_ALG, client_id: str = "test-client") -> None:
        self.audience = audience
        self.client_id = client_id
        self._keys: list[_Published] = []
        self.active_kid = self.add_key(alg)
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._lock = threading.Lock()

    # -- server ----------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        """The issuer URL (``http://127.0.0.1:<port>``); the server must have been started once."""
        if not self._port:
            raise RuntimeError("TestIssuer not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def jwks_requests(self) -> int:
        """How many times the JWKS was fetched."""
        return self.requests.count("/jwks")

    @property
    def discovery_requests(self) -> int:
        """How many times the discovery document was fetched."""
        return self.requests.count("/.well-known/openid-configuration")

    def start(self) -> TestIssuer:
        """Start (or restart, on the same port) the HTTP server."""
        if self._server is not None:
            return self
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), self._handler_class())
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="test-issuer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (simulates the identity provider being down)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> TestIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def discovery(self) -> dict[str, Any]:
        """The discovery document served."""
        return {"issuer": self.issuer, "jwks_uri": f"{self.issuer}/jwks",
                "token_endpoint": f"{self.issuer}/token",
                "id_token_signing_alg_values_supported": sorted({k.alg for k in self._keys})}

    def jwks(self) -> dict[str, Any]:
        """The JWKS served: public halves of every published key."""
        return {"keys": [{**k.key.as_dict(private=False), "alg": k.alg, "use": "sig"} for k in self._keys]}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with issuer._lock:
                    issuer.requests.append(self.path)
                if self.path == "/.well-known/openid-configuration":
                    self._json(issuer.discovery())
                elif self.path == "/jwks":
                    self._json(issuer.jwks())
                else:
                    self._json({"error": "not found"}, 404)

            def _json(self, body: dict[str, Any], status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    # -- keys and tokens -------------------------------------------------------------------

    def add_key(self, alg: str = _DEFAULT_ALG, *, activate: bool = False) -> str:
        """Publish a new key (rotation); returns its kid."""
        key = generate_key(alg)
        self._keys.append(_Published(alg, key))
        if activate:
            self.active_kid = key.kid or ""
        return key.kid or ""

    def key(self, kid: str | None = None) -> tuple[str, SigningKey]:
        """The (alg, private key) of ``kid`` (default: the active key)."""
        wanted = kid or self.active_kid
        for k in self._keys:
            if k.key.kid == wanted:
                return k.alg, k.key
        raise KeyError(wanted)

    def claims(self, *, lifetime_s: int = 300, **overrides: Any) -> dict[str, Any]:
        """Good RFC 9068 claims, with ``overrides`` applied (a value of ``None`` removes the claim)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": self.client_id, "aud": self.audience, "client_id": self.client_id,
            "scope": "features:read", "projects": ["default"], "iat": now, "nbf": now,
            "exp": now + lifetime_s, "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(self, *, header_overrides: dict[str, Any] | None = None, key: SigningKey | bytes | None = None,
             kid: str | None = None, lifetime_s: int = 300, omit: Iterable[str] = (), **claims: Any) -> str:
        """A signed access token; override claims, header fields (``None`` removes one) or the key.

        ``key`` defaults to the published key ``kid`` (or the active key); pass another key to
        forge a signature, bytes for an HS* secret, together with ``header_overrides={"alg": ...}``.
        """
        alg, own_key = self.key(kid)
        header: dict[str, Any] = {"alg": alg, "typ": "at+jwt", "kid": kid or self.active_kid}
        header.update(header_overrides or {})
        header = {k: v for k, v in header.items() if v is not None}
        body = self.claims(lifetime_s=lifetime_s, **claims)
        for name in omit:
            body.pop(name, None)
        signer: SigningKey | bytes | None = own_key if key is None else key
        if header.get("alg") == "none":
            signer = None
        return sign_compact(header, body, signer)

    def jwks_cache(self, **kwargs: Any) -> JwksCache:
        """A fresh ``JwksCache`` for this issuer."""
        return JwksCache(self.issuer, **kwargs)

    def verifier(self, *, jwks: JwksCache | None = None, **kwargs: Any) -> TokenVerifier:
        """A ``TokenVerifier`` trusting this issuer, with a fresh JWKS cache unless given."""
        return TokenVerifier(self.issuer, self.audience, jwks or self.jwks_cache(), **kwargs)


@pytest.fixture
def test_issuer() -> Iterator[TestIssuer]:
    """A running ``TestIssuer`` for one test."""
    with TestIssuer() as issuer:
        yield issuer


def bad_tokens(issuer: TestIssuer) -> dict[str, str]:
    """A catalogue of tokens every resource server must refuse, by name (for parametrized tests).

    Header URLs (``jku``, ``x5u``) point at ``<issuer>/evil/...``: a verifier that fetched them
    would show up in ``issuer.requests``.
    """
    now = int(time.time())
    attacker = generate_key("ES256")
    alg, own = issuer.key()
    public_pem = own.as_pem(private=False)
    good = issuer.mint()
    head, _, sig = good.split(".")
    dup_header = b'{"alg":"none","typ":"at+jwt","kid":"k","alg":"%s"}' % alg.encode()
    tampered_payload = b64url(json.dumps(issuer.claims(scope="admin", projects=["*"])).encode())
    return {
        "expired": issuer.mint(iat=now - 3700, nbf=now - 3700, exp=now - 3600),
        "not_yet_valid": issuer.mint(iat=now, nbf=now + 600, exp=now + 1200),
        "issued_in_future": issuer.mint(iat=now + 600, nbf=now, exp=now + 1200),
        "wrong_issuer": issuer.mint(iss="https://issuer.evil.example"),
        "issuer_trailing_slash": issuer.mint(iss=issuer.issuer + "/"),
        "wrong_audience": issuer.mint(aud="someone-else"),
        "audience_list_without_ours": issuer.mint(aud=["a", "b"]),
        "alg_none": issuer.mint(header_overrides={"alg": "none"}),
        "alg_none_with_signature": sign_compact({"alg": "none", "typ": "at+jwt", "kid": issuer.active_kid},
                                                issuer.claims(), None) + "c2ln",
        "hs256_with_public_key": issuer.mint(header_overrides={"alg": "HS256"}, key=public_pem),
        "alg_swapped_in_header": b64url(json.dumps({"alg": "RS256" if alg != "RS256" else "ES256",
                                                    "typ": "at+jwt", "kid": issuer.active_kid}).encode())
        + good[len(head):],
        "unknown_kid": issuer.mint(header_overrides={"kid": "no-such-key"}),
        "missing_kid": issuer.mint(header_overrides={"kid": None}),
        "kid_path_traversal": issuer.mint(header_overrides={"kid": "../../../../etc/passwd"}),
        "kid_dotdot": issuer.mint(header_overrides={"kid": "..%2f..%2fkeys"}),
        "kid_sql": issuer.mint(header_overrides={"kid": "x' OR '1'='1"}),
        "kid_not_string": issuer.mint(header_overrides={"kid": 42}),
        "embedded_jwk": issuer.mint(header_overrides={"kid": attacker.kid, "alg": "ES256",
                                                      "jwk": attacker.as_dict(private=False)}, key=attacker),
        "jku": issuer.mint(header_overrides={"jku": issuer.issuer + "/evil/jwks"}),
        "x5u": issuer.mint(header_overrides={"x5u": issuer.issuer + "/evil/x5u"}),
        "x5c": issuer.mint(header_overrides={"x5c": ["MIIB"]}),
        "crit": issuer.mint(header_overrides={"crit": ["exp"]}),
        "forged_signature": issuer.mint(key=attacker) if alg == "ES256" else issuer.mint(
            header_overrides={"alg": "ES256"}, key=attacker),
        "missing_typ": issuer.mint(header_overrides={"typ": None}),
        "typ_jwt": issuer.mint(header_overrides={"typ": "JWT"}),
        "id_token": issuer.mint(header_overrides={"typ": "JWT"}, nonce="n-0S6_WzA2Mj", scope=None),
        "lifetime_over_max": issuer.mint(lifetime_s=3 * 24 * 3600),
        "missing_sub": issuer.mint(omit=["sub"]),
        "missing_client_id": issuer.mint(omit=["client_id"]),
        "missing_exp": issuer.mint(omit=["exp"]),
        "string_exp": issuer.mint(exp="9999999999"),
        "tampered_payload": f"{head}.{tampered_payload}.{sig}",
        "signature_stripped": f"{head}.{good.split('.')[1]}.",
        "malformed_one_part": "abc",
        "malformed_two_parts": "abc.def",
        "malformed_four_parts": good + ".x",
        "malformed_dots": "..",
        "malformed_not_base64": "!!!.@@@.###",
        "malformed_header_not_json": f"{b64url(b'not json')}.{good.split('.')[1]}.{sig}",
        "malformed_header_array": f"{b64url(b'[1,2]')}.{good.split('.')[1]}.{sig}",
        "malformed_duplicate_header": f"{b64url(dup_header)}.{good.split('.')[1]}.{sig}",
        "oversized": issuer.mint(padding="x" * 10_000),
    }


def bad_token_names() -> list[str]:
    """The names of ``bad_tokens`` (for ``pytest.mark.parametrize`` at import time)."""
    with TestIssuer() as issuer:
        return sorted(bad_tokens(issuer))

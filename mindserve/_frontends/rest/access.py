"""The access check of the REST doors: an aiohttp middleware that puts each request's route in its group
(``mindserve._access.groups``) and asks the policy before the route's handler reads the body; and the token
endpoints of configured consumers (Seldon's flow), ``GET|POST /token`` and ``POST /oauth/token``."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
from typing import Any, Optional

from aiohttp import web

from mindserve._access.groups import OPEN, rest_group
from mindserve._access.identities import CN, DNS, EMAIL, IP, URI, Identity
from mindserve._access.policy import AccessPolicy, TokenIssuer, duplicate_header
from mindserve._errors import PermissionDenied, ServingError, Unauthenticated
from mindserve._frontends.rest.common import error_response, failure_response, json_response

BAD_CONSUMER = "unknown consumer, or wrong secret"


# Python's names of the subject alternative name types (ssl's getpeercert) that identities are matched by
_SAN_TYPES = {"DNS": DNS, "IP Address": IP, "email": EMAIL, "URI": URI}


def _peer_identities(request: web.Request) -> list[Identity]:
    """The typed names a verified client certificate carries: its common name and subject alternative names
    (of the types in ``_SAN_TYPES``; others, such as directory names, name no identity)."""
    transport = request.transport
    cert: Any = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return []
    names: list[Identity] = [
        (CN, value) for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    names += [(_SAN_TYPES[kind], value) for kind, value in cert.get("subjectAltName", ()) if kind in _SAN_TYPES]
    return names


def _denial(request: web.Request, error: ServingError) -> web.Response:
    response = failure_response("Access", error, "error_msg" if request.path.startswith("/model/") else "error")
    if isinstance(error, Unauthenticated):
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def access_middleware(policy: AccessPolicy):
    """Middleware: each request checked for its route's group before its handler runs."""

    @web.middleware
    async def check(request: web.Request, handler):
        resource = request.match_info.route.resource
        if resource is None:  # no such endpoint or method: the router's 404 / 405 answers it
            return await handler(request)
        group = rest_group(request.method, resource.canonical)
        if group == OPEN:
            return await handler(request)
        if group is None:
            return _denial(request, PermissionDenied(f"the endpoint {resource.canonical} is not in the access table"))
        error = policy.decide(group, lambda name: request.headers.getall(name, []))
        if (
            error is not None
            and policy.uses_certificates
            and policy.admits_identities(group, _peer_identities(request))
        ):
            error = None
        if error is not None:
            return _denial(request, error)
        return await handler(request)

    return check


class TokenRoutes:
    """Issues consumers' tokens: ``/token?consumer_key=K&consumer_secret=S`` (query, or form body on POST) and
    ``POST /oauth/token`` with HTTP Basic credentials and ``grant_type=client_credentials``. A client address
    whose secret checks keep failing is backed off (``mindserve._access.backoff``): 429 with ``Retry-After``,
    its requests unchecked meanwhile."""

    def __init__(self, issuer: TokenIssuer):
        self._issuer = issuer

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/token", self.token)
        app.router.add_post("/token", self.token)
        app.router.add_post("/oauth/token", self.oauth_token)

    async def token(self, request: web.Request) -> web.Response:
        busy = self._backed_off(request)
        if busy is not None:
            return busy
        form = await self._form(request)
        key = request.query.get("consumer_key", form.get("consumer_key", ""))
        secret = request.query.get("consumer_secret", form.get("consumer_secret", ""))
        return self._answer(request, key, secret)

    async def oauth_token(self, request: web.Request) -> web.Response:
        busy = self._backed_off(request)
        if busy is not None:
            return busy
        form = await self._form(request)
        grant = form.get("grant_type", request.query.get("grant_type", ""))
        if grant != "client_credentials":
            return error_response(400, "grant_type must be client_credentials")
        authorization = request.headers.getall("Authorization", [])
        if len(authorization) > 1:  # as the access check answers a credential given twice
            return _basic_challenge(error_response(401, duplicate_header("authorization")))
        credentials = _basic(authorization[0] if authorization else None)
        if credentials is None:
            key, secret = form.get("client_id", ""), form.get("client_secret", "")
        else:
            key, secret = credentials
        return self._answer(request, key, secret)

    def _backed_off(self, request: web.Request) -> Optional[web.Response]:
        """The 429 answer of a client address in its back-off; None when it may be checked."""
        wait_s = self._issuer.backoff.retry_after(_client(request))
        if wait_s <= 0:
            return None
        seconds = max(1, math.ceil(wait_s))
        response = error_response(429, backed_off(seconds))
        response.headers["Retry-After"] = str(seconds)
        return response

    @staticmethod
    async def _form(request: web.Request) -> dict[str, str]:
        if request.method != "POST" or request.content_type != "application/x-www-form-urlencoded":
            return {}
        if (request.content_length or 0) > 8192:
            return {}
        return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}

    def _answer(self, request: web.Request, key: str, secret: str) -> web.Response:
        token = self._issuer.issue(key, secret) if key and secret else None
        if token is None:
            self._issuer.backoff.failed(_client(request))
            return _basic_challenge(error_response(401, BAD_CONSUMER))
        self._issuer.backoff.succeeded(_client(request))
        response = json_response({"access_token": token, "token_type": "bearer", "expires_in": int(self._issuer.ttl_s)})
        response.headers["Cache-Control"] = "no-store"  # (OAuth: a token must not be kept by caches)
        return response


def backed_off(seconds: int) -> str:
    """The text of the 429 answer to a client in its back-off."""
    return f"too many failed attempts from this address; retry after {seconds} s"


def _client(request: web.Request) -> str:
    """What a back-off is kept for: the peer's IPv4 address, or the /64 network of its IPv6 address (one host
    commonly holds a whole /64); all clients of a unix socket share one."""
    remote = request.remote or ""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return remote


def _basic_challenge(response: web.Response) -> web.Response:
    response.headers["WWW-Authenticate"] = 'Basic realm="mindserve"'
    return response


def _basic(value: Optional[str]) -> Optional[tuple[str, str]]:
    """The (user, password) of an ``Authorization: Basic`` value."""
    if not value or len(value) > 8192:
        return None
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None

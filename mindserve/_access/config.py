"""What a user configures to guard the server's doors (``server.AccessConfig``, ``server.JWTConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union


@dataclass(frozen=True)
class JWTConfig:
    """Bearer tokens (JSON Web Tokens) verified with PyJWT.

    Give ``secret`` for HMAC algorithms (HS256, HS384, HS512; at least 32 bytes), or ``public_key`` (PEM) for
    public-key ones (RS*, PS*, ES*, EdDSA), never both. Only the ``algorithms`` listed are accepted, whatever a
    token's header says; tokens must carry ``exp``; ``audience`` and ``issuer``, when given, must match.
    ``groups_claim`` names the claim that lists the groups a token grants (a space-separated string, as OAuth's
    ``scope``, or a list); None: a valid token opens every group.
    """

    secret: Optional[Union[str, bytes]] = None
    public_key: Optional[Union[str, bytes]] = None
    algorithms: Sequence[str] = ("HS256",)
    audience: Optional[str] = None
    issuer: Optional[str] = None
    groups_claim: Optional[str] = "scope"
    leeway_s: float = 30.0

    def __repr__(self) -> str:  # never print the secret
        return (
            f"JWTConfig(secret={'<set>' if self.secret else None}, public_key="
            f"{'<set>' if self.public_key else None}, algorithms={tuple(self.algorithms)!r}, "
            f"audience={self.audience!r}, issuer={self.issuer!r}, groups_claim={self.groups_claim!r}, "
            f"leeway_s={self.leeway_s!r})"
        )


@dataclass(frozen=True)
class AccessConfig:
    """Who may call which group of the server's methods (groups: health, metadata, inference, shared-memory,
    statistics, metrics). Give it to ``start_grpc_server(..., access=...)`` and ``start_restful_server(...,
    access=...)``.

    - ``restricted``: ``{"inference": ("infer-key", "s3cret"), "metadata,health": ("admin-key", "...")}``: a
      request of a group listed must carry that header (REST) or metadata key (gRPC; also as
      ``triton-grpc-protocol-<key>``, so that Triton clients work unchanged) with that value (Triton's restricted
      APIs).
    - ``jwt``: a JWTConfig; requests carry ``Authorization: Bearer <token>`` (gRPC metadata ``authorization``).
    - ``client_certificates``: ``{"client.example.com": ("inference", "metadata")}``: with mutual TLS, the groups
      a verified client certificate (by common name or subject alternative name) opens.
    - ``consumers``: ``{"KEY": "SECRET"}`` lets the REST server issue tokens (``/token``, ``/oauth/token``), valid
      for ``token_ttl_s`` seconds, accepted like bearer tokens and as gRPC metadata ``oauth_token``.
      A consumer may also send its key and secret as HTTP Basic credentials in the metadata key
      ``x-ms-authentication`` (what video-analytics clients send on ProcessMediaStream).

    A group that ``restricted`` does not name is guarded by the other methods configured, except ``health``,
    which stays open unless ``restricted`` names it (probes must work). A request passes when any configured
    method admits it for its group.
    """

    restricted: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    jwt: Optional[JWTConfig] = None
    client_certificates: Mapping[str, Sequence[str]] = field(default_factory=dict)
    consumers: Mapping[str, str] = field(default_factory=dict)
    token_ttl_s: float = 3600.0

    def __repr__(self) -> str:  # never print a key's value or a consumer's secret
        restricted = {groups: (key, "<set>") for groups, (key, _) in self.restricted.items()}
        return (
            f"AccessConfig(restricted={restricted!r}, jwt={self.jwt!r}, "
            f"client_certificates={dict(self.client_certificates)!r}, consumers={sorted(self.consumers)!r}, "
            f"token_ttl_s={self.token_ttl_s!r})"
        )

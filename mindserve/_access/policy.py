"""The access decision for one request, whatever transport carried it.

A transport hands over the request's group (``groups``), a way to read every value of its headers or metadata
keys (a credential given twice is refused), and (for mutual TLS) the typed identities its verified client
certificate carries (``identities``). Keys are compared in constant time (``hmac.compare_digest``); tokens are
verified with PyJWT against the configured algorithms only, ``exp`` required, their time claims numbers in range,
and a verified token is remembered until it expires, so that a client sending the same token is not verified again
on every call. No denial text repeats a credential or what was expected of its value.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from mindserve._access.backoff import FailureBackoff
from mindserve._access.config import AccessConfig, JWTConfig
from mindserve._access.groups import GROUPS, HEALTH
from mindserve._access.identities import Identity, configured_identities, normalized
from mindserve._errors import KeyRequired, PermissionDenied, ServingError, Unauthenticated

# every value a request gives a header (REST) or metadata key (gRPC), in order; [] when none
Headers = Callable[[str], Sequence[str]]

# a credential longer than this is refused unread (a token of a megabyte must not be parsed and verified)
MAX_CREDENTIAL_BYTES = 8192
BASIC_HEADER = "x-ms-authentication"  # where video-analytics clients send HTTP Basic credentials
_HMAC_ALGORITHMS = {"HS256", "HS384", "HS512"}
_KEY_ALGORITHMS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES256K", "ES384", "ES512", "EdDSA"}
_MIN_SECRET_BYTES = 32
_TOKEN_CACHE_LIMIT = 4096
_ALL_GROUPS = frozenset(GROUPS)
INVALID_TOKEN = "a valid bearer token is required (Authorization: Bearer <token>)"
# exp, nbf and iat: JSON numbers of seconds since 1970, from 0 to 2**53 (past it no clock reaches, and a float
# no longer holds every whole second); anything else (a string, true, 1e400, 10**400) makes the token invalid
TIME_CLAIMS = ("exp", "nbf", "iat")
MAX_TIME_CLAIM = 2**53


def _is_time(value: object) -> bool:
    """Whether a time claim's value is a number of seconds within 0..MAX_TIME_CLAIM (bool is no number here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return 0 <= value <= MAX_TIME_CLAIM  # (False for NaN; an int of any size compares without overflow)


def bad_time_claim(name: str) -> str:
    """The denial text of a signed token whose time claim ``name`` is not a number in range."""
    return f"{INVALID_TOKEN}: its claim '{name}' must be a number of seconds since 1970, from 0 to 2**53"


def _groups(names: Iterable[str], where: str) -> list[str]:
    """Group names as configured, each known and named once."""
    seen: list[str] = []
    for name in names:
        name = name.strip()
        if name not in GROUPS:
            raise RuntimeError(f"access: unknown group '{name}' in {where}; the groups are {', '.join(GROUPS)}")
        if name in seen:
            raise RuntimeError(f"access: group '{name}' is named twice in {where}")
        seen.append(name)
    return seen


class TokenVerifier:
    """Verifies bearer tokens of one key and algorithm family; remembers the groups of those it verified."""

    def __init__(self, config: JWTConfig, what: str = "jwt"):
        try:
            import jwt
        except ImportError:
            raise RuntimeError("access: JWT verification needs PyJWT: pip install 'mindserve[auth]'") from None
        self._jwt = jwt
        algorithms = tuple(config.algorithms)
        if not algorithms or isinstance(config.algorithms, str):
            raise RuntimeError(f"access: {what}.algorithms must list at least one algorithm, e.g. ('HS256',)")
        unknown = [a for a in algorithms if a not in _HMAC_ALGORITHMS | _KEY_ALGORITHMS]
        if unknown:
            raise RuntimeError(
                f"access: {what}.algorithms: unknown or unsafe algorithm '{unknown[0]}'; use "
                f"{', '.join(sorted(_HMAC_ALGORITHMS))} with a secret or "
                f"{', '.join(sorted(_KEY_ALGORITHMS))} with a public key"
            )
        hmac_family = [a for a in algorithms if a in _HMAC_ALGORITHMS]
        if hmac_family and len(hmac_family) != len(algorithms):
            raise RuntimeError(
                f"access: {what}.algorithms mixes HMAC ({', '.join(hmac_family)}) and public-key "
                f"algorithms: a public key could then be taken as an HMAC secret"
            )
        if (config.secret is None) == (config.public_key is None):
            raise RuntimeError(f"access: {what} needs exactly one of secret (HS algorithms) and public_key")
        key: Union[str, bytes, Any]
        if hmac_family:
            if config.secret is None:
                raise RuntimeError(f"access: {what}.algorithms {', '.join(algorithms)} need a secret, not a public key")
            secret = config.secret.encode() if isinstance(config.secret, str) else bytes(config.secret)
            if len(secret) < _MIN_SECRET_BYTES:
                raise RuntimeError(
                    f"access: {what}.secret has {len(secret)} bytes; an HMAC secret needs at least "
                    f"{_MIN_SECRET_BYTES} (e.g. python -c 'import secrets; "
                    f"print(secrets.token_urlsafe(48))')"
                )
            key = secret
        else:
            if config.public_key is None:
                raise RuntimeError(f"access: {what}.algorithms {', '.join(algorithms)} need a public_key, not a secret")
            implementation = jwt.get_algorithm_by_name(algorithms[0])
            try:
                key = implementation.prepare_key(config.public_key)
            except Exception as exc:  # PyJWT's and cryptography's errors alike
                raise RuntimeError(
                    f"access: {what}.public_key is not a public key that {algorithms[0]} can use (PEM expected)"
                ) from exc
        self._key = key
        self._algorithms = list(algorithms)
        self._audience = config.audience
        self._issuer = config.issuer
        self._groups_claim = config.groups_claim
        self._leeway = float(config.leeway_s)
        self._known: dict[str, tuple[float, frozenset]] = {}  # token -> (valid until, groups)

    def verify(self, token: str) -> tuple[Optional[frozenset], str]:
        """The groups a token opens and ``""``, or None and why when it is not valid now: ``""`` for anything
        but a signed token whose time claims are not numbers in range (then the text says which claim)."""
        known = self._known.get(token)
        now = time.time()
        if known is not None:
            if now < known[0]:
                return known[1], ""
            del self._known[token]
        try:
            # the time claims are checked here, not by PyJWT: it takes a numeric string, and a huge number
            # overflows where its float is needed
            claims = self._jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={
                    "require": ["exp"],
                    "verify_aud": self._audience is not None,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except Exception:  # PyJWT's errors, and anything a forged token provokes in it: invalid, nothing more
            return None, ""
        if not isinstance(claims, dict):
            return None, ""
        for name in TIME_CLAIMS:
            if name in claims and not _is_time(claims[name]):
                return None, bad_time_claim(name)
        exp = float(claims["exp"])
        if exp <= now - self._leeway:
            return None, ""
        for name in ("nbf", "iat"):  # a token not valid yet (PyJWT's rule for both)
            if name in claims and float(claims[name]) > now + self._leeway:
                return None, ""
        groups = self._claimed_groups(claims)
        if len(self._known) >= _TOKEN_CACHE_LIMIT:
            self._known.clear()
        self._known[token] = (exp + self._leeway, groups)
        return groups, ""

    def _claimed_groups(self, claims: dict) -> frozenset:
        if self._groups_claim is None:
            return _ALL_GROUPS
        value = claims.get(self._groups_claim, ())
        names = value.split() if isinstance(value, str) else value if isinstance(value, list) else ()
        return frozenset(n for n in names if isinstance(n, str))


class TokenIssuer:
    """Issues the short-lived tokens of configured consumers (Seldon's token flow), signed with a secret made at
    start and known to this process only; they open every group."""

    def __init__(self, consumers: dict[str, str], ttl_s: float):
        if ttl_s <= 0:
            raise RuntimeError(f"access: token_ttl_s must be positive, got {ttl_s!r}")
        for key, secret in consumers.items():
            if not isinstance(key, str) or not key or not isinstance(secret, str) or not secret:
                raise RuntimeError("access: consumers maps each non-empty key to a non-empty secret")
        self._consumers = {k.encode(): v.encode() for k, v in consumers.items()}
        self.ttl_s = ttl_s
        self._secret = secrets.token_bytes(32)
        self.verifier = TokenVerifier(
            JWTConfig(
                secret=self._secret, algorithms=("HS256",), groups_claim=None, audience="mindserve-consumer", leeway_s=0
            ),
            "consumers",
        )
        self.backoff = FailureBackoff()  # failed secret checks at the token endpoints, per client address

    def admits(self, key: str, secret: str) -> bool:
        """Whether ``key`` is a consumer and ``secret`` its secret (compared in constant time, even for an unknown
        key, so that timing tells nothing)."""
        expected = self._consumers.get(key.encode(errors="surrogateescape"))
        given = secret.encode(errors="surrogateescape")
        matches = hmac.compare_digest(expected if expected is not None else b"\0" * 32, given)
        return expected is not None and matches

    def issue(self, key: str, secret: str) -> Optional[str]:
        """A token for a consumer whose key and secret match, or None."""
        if not self.admits(key, secret):
            return None
        import jwt

        now = int(time.time())
        return jwt.encode(
            {"sub": key, "aud": "mindserve-consumer", "iat": now, "exp": now + int(self.ttl_s)},
            self._secret,
            algorithm="HS256",
        )


class AccessPolicy:
    """The checks an AccessConfig asks for, ready to decide requests."""

    def __init__(self, config: AccessConfig):
        if not isinstance(config, AccessConfig):
            raise RuntimeError(
                f"Parameter 'access' should be a server.AccessConfig, but actually {type(config).__name__}"
            )
        self._keys: dict[str, tuple[str, bytes]] = {}
        for names, pair in config.restricted.items():
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) and p for p in pair)):
                raise RuntimeError(
                    f"access: restricted['{names}'] should be a (header, value) pair of non-empty strings"
                )
            for group in _groups(names.split(","), f"restricted['{names}']"):
                if group in self._keys:
                    raise RuntimeError(f"access: group '{group}' is restricted twice")
                self._keys[group] = (pair[0].lower(), pair[1].encode())
        # typed identity (see identities.py) -> the groups it opens; a certificate may match several names
        self._certificates: dict[Identity, frozenset] = {}
        for name, opened in config.client_certificates.items():
            if not isinstance(name, str) or not name.strip():
                raise RuntimeError(
                    f"access: client_certificates maps names (a DNS name, an IP address, an email "
                    f"address, a URI or a common name) to groups, not {name!r}"
                )
            listed = (opened,) if isinstance(opened, str) else tuple(opened)
            groups = frozenset(_groups(listed, f"client_certificates['{name}']"))
            for identity in configured_identities(name):
                self._certificates[identity] = self._certificates.get(identity, frozenset()) | groups
        self.verifier = TokenVerifier(config.jwt) if config.jwt is not None else None
        self.issuer = TokenIssuer(dict(config.consumers), config.token_ttl_s) if config.consumers else None
        guarded = set(self._keys)
        if self.verifier or self.issuer or self._certificates:
            guarded |= set(GROUPS) - {HEALTH}
        self._guarded = frozenset(guarded)
        self.uses_certificates = bool(self._certificates)

    def guards(self, group: str) -> bool:
        return group in self._guarded

    def decide(self, group: str, headers: Headers) -> Optional[ServingError]:
        """None when the request's headers admit it for ``group``; else the error that denies it unless its
        client certificate admits it (``admits_identities``). ``headers(name)`` gives every value a header
        (metadata key) has in the request: a credential given twice is refused, whichever copy is right, so that
        no transport's choice of copy decides."""
        if group not in self._guarded:
            return None
        key = self._keys.get(group)
        tokens = self.verifier is not None or self.issuer is not None
        read = (
            ([key[0]] if key is not None else [])
            + ([BASIC_HEADER] if self.issuer is not None else [])
            + (["authorization", "oauth_token"] if tokens else [])
        )
        given: dict[str, Optional[str]] = {}
        for name in read:
            values = headers(name)
            if len(values) > 1:
                return Unauthenticated(duplicate_header(name))
            given[name] = values[0] if values else None
        if key is not None:
            value = given[key[0]]
            if value is not None and hmac.compare_digest(value.encode(errors="surrogateescape"), key[1]):
                return None
        if self.issuer is not None:  # a consumer's HTTP Basic credentials, as video-analytics clients send them
            basic = _basic(given[BASIC_HEADER])
            if basic is not None and self.issuer.admits(*basic):
                return None
        token_groups: Optional[frozenset] = None
        token_given = False
        why = ""
        if tokens:
            token = _bearer(given["authorization"]) or given["oauth_token"]
            if token:
                token_given = True
                token_groups, why = self._token_groups(token)
                if token_groups is not None and group in token_groups:
                    return None
        if token_groups is not None:
            return PermissionDenied(f"the token does not open the group '{group}'")
        if key is not None:
            alternatives = " or a valid bearer token" if tokens else ""
            return KeyRequired(f"This API is restricted, expecting header '{key[0]}'{alternatives}")
        if tokens:
            if why:
                return Unauthenticated(why)
            return Unauthenticated(
                INVALID_TOKEN
                if token_given or not self._certificates
                else f"{INVALID_TOKEN}, or a client certificate that opens '{group}'"
            )
        return Unauthenticated(f"a client certificate that opens the group '{group}' is required")

    def _token_groups(self, token: str) -> tuple[Optional[frozenset], str]:
        """The groups of the first verifier that takes ``token``; else None and why (see TokenVerifier.verify)."""
        if len(token) > MAX_CREDENTIAL_BYTES:
            return None, ""
        why = ""
        for verifier in (self.verifier, self.issuer.verifier if self.issuer else None):
            if verifier is not None:
                groups, reason = verifier.verify(token)
                if groups is not None:
                    return groups, ""
                why = why or reason
        return None, why

    def admits_identities(self, group: str, identities: Iterable[Identity]) -> bool:
        """Whether a verified client certificate carrying ``identities`` (typed: see identities.py) opens
        ``group``."""
        for kind, value in identities:
            compared = normalized(kind, value)
            if compared is not None and group in self._certificates.get((kind, compared), ()):
                return True
        return False


def duplicate_header(name: str) -> str:
    """The denial text of a request that gives the credential header (metadata key) ``name`` more than once."""
    return f"the header '{name}' is given more than once"


def _bearer(value: Optional[str]) -> Optional[str]:
    """The token of an ``Authorization: Bearer <token>`` value."""
    if value is None or len(value) > MAX_CREDENTIAL_BYTES + 7:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _basic(value: Optional[str]) -> Optional[tuple[str, str]]:
    """The (user, password) of an HTTP Basic credential (``Basic base64(user:password)``)."""
    if value is None or len(value) > MAX_CREDENTIAL_BYTES:
        return None
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if colon and user else None

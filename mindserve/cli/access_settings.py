"""The ``access:`` section of serving.yaml and the ``MINDSERVE_AUTH_*`` environment variables: they make the
``server.AccessConfig`` that ``mindserve serve`` gives both of its servers.

YAML::

    access:
      restricted:                          # Triton-style keys, per group (several groups: "health,metadata")
        inference: {header: infer-key, value_env: INFER_KEY}      # or value_file: ..., or value: ... (warned)
      jwt:
        secret_file: /run/secrets/jwt      # or secret_env: NAME, secret: ... (warned), or public_key_file: key.pem
        algorithms: [HS256]
        audience: my-api                   # optional, as issuer
        groups_claim: scope                # null: a valid token opens every group
        leeway_s: 30
      client_certificates:                 # with tls.verify_client: identity -> groups
        client.example.com: [inference]
      consumers:                           # token endpoints on REST: key -> {secret_env|secret_file|secret}
        app: {secret_env: APP_SECRET}
      token_ttl_s: 3600

Secrets belong in the environment or in files: one written in the YAML file itself is taken, with a warning.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from mindserve._access.config import AccessConfig, JWTConfig
from mindserve._access.policy import AccessPolicy

ACCESS_KEYS = ("restricted", "jwt", "client_certificates", "consumers", "token_ttl_s")
JWT_KEYS = (
    "secret",
    "secret_env",
    "secret_file",
    "public_key_file",
    "algorithms",
    "audience",
    "issuer",
    "groups_claim",
    "leeway_s",
)
SECRET_WARNING = (
    "{origin}: a secret written in the configuration file; it belongs in the environment "
    "({env_key}) or in a file ({file_key})"
)

ENV_VARS = (
    ("MINDSERVE_AUTH_RESTRICTED", "GROUPS:HEADER=VALUE[;...], e.g. inference:infer-key=s3cret"),
    ("MINDSERVE_AUTH_JWT_SECRET", "JWT HMAC secret (32 bytes or more)"),
    ("MINDSERVE_AUTH_JWT_SECRET_FILE", "file holding the JWT HMAC secret"),
    ("MINDSERVE_AUTH_JWT_PUBLIC_KEY_FILE", "PEM public key that verifies JWTs (RS/PS/ES/EdDSA)"),
    ("MINDSERVE_AUTH_JWT_ALGORITHMS", "comma-separated JWT algorithms (default HS256)"),
    ("MINDSERVE_AUTH_JWT_AUDIENCE", "the JWT audience required"),
    ("MINDSERVE_AUTH_JWT_ISSUER", "the JWT issuer required"),
    ("MINDSERVE_AUTH_JWT_GROUPS_CLAIM", "claim listing a token's groups (default scope; none: every group)"),
    ("MINDSERVE_AUTH_CONSUMERS", "token consumers: KEY:SECRET, several joined by ','"),
)


class AccessSettingError(Exception):
    """A bad access setting; the text names where it came from."""


def _mapping(value: Any, origin: str, what: str, keys: tuple) -> dict:
    if not isinstance(value, dict):
        raise AccessSettingError(f"{origin}: expected {what}, got {value!r}")
    for key in value:
        if key not in keys:
            raise AccessSettingError(f"{origin}.{key}: unknown key (known keys: {', '.join(keys)})")
    return value


def _text(value: Any, origin: str) -> str:
    if not isinstance(value, str) or not value:
        raise AccessSettingError(f"{origin}: expected a non-empty string, got {value!r}")
    return value


def _read_file(path: Any, origin: str, base: str, strip: bool = True) -> str:
    """A file's text: a secret without its trailing newline (``strip``), a PEM key as it is."""
    full = os.path.join(base, os.path.expanduser(_text(path, origin)))
    try:
        with open(full, encoding="utf-8") as f:
            text = f.read()
        return text.strip() if strip else text
    except OSError as exc:
        raise AccessSettingError(f"{origin}: cannot read '{full}': {exc.strerror}") from None


class _Reader:
    def __init__(self, environ: Mapping[str, str], base: str):
        self.environ = environ
        self.base = base
        self.warnings: list[str] = []

    def secret(self, entry: dict, origin: str, name: str) -> str:
        """A secret given as ``<name>_env``, ``<name>_file`` or (warned) ``<name>`` itself: exactly one."""
        given = [k for k in (f"{name}_env", f"{name}_file", name) if k in entry]
        if len(given) != 1:
            raise AccessSettingError(f"{origin}: give exactly one of {name}_env, {name}_file and {name}")
        key = given[0]
        if key.endswith("_env"):
            variable = _text(entry[key], f"{origin}.{key}")
            value = self.environ.get(variable)
            if not value:
                raise AccessSettingError(f"{origin}.{key}: the environment variable {variable} is not set")
            return value
        if key.endswith("_file"):
            return _read_file(entry[key], f"{origin}.{key}", self.base)
        self.warnings.append(
            SECRET_WARNING.format(origin=f"{origin}.{key}", env_key=f"{name}_env", file_key=f"{name}_file")
        )
        return _text(entry[key], f"{origin}.{key}")


def _restricted_text(text: str, origin: str) -> dict:
    restricted = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        groups, colon, pair = part.partition(":")
        header, equals, value = pair.partition("=")
        if not colon or not equals or not groups or not header or not value:
            raise AccessSettingError(
                f"{origin}: expected GROUPS:HEADER=VALUE (several joined by ';'), got '{groups}:...'"
            )
        restricted[groups.strip()] = (header.strip(), value)
    return restricted


def _named(section: dict, key: str, origin: str, what: str) -> list[tuple[str, Any, str]]:
    """The entries of a mapping-valued setting (``restricted``, ``client_certificates``, ``consumers``), each as
    (name, value, origin); none when the setting is absent or null."""
    value = section.get(key)
    if value is None:
        return []
    where = f"{origin}.{key}"
    if not isinstance(value, dict):
        raise AccessSettingError(f"{where}: expected {what}, got {value!r}")
    return [(str(name), entry, f"{where}.{name}") for name, entry in value.items()]


def read_access(
    document: Any, origin: str, base: str, environ: Mapping[str, str]
) -> tuple[Optional[AccessConfig], list[str]]:
    """The AccessConfig of an ``access:`` section (None when absent) with the environment's overrides, checked
    as the server would check it, and the warnings to print."""
    reader = _Reader(environ, base)
    section = {} if document is None else _mapping(document, origin, "a mapping of access settings", ACCESS_KEYS)
    restricted: dict = {}
    for groups, entry, where in _named(section, "restricted", origin, "a mapping of groups to keys"):
        entry = _mapping(
            entry,
            where,
            "a mapping with header and value_env, value_file or value",
            ("header", "value", "value_env", "value_file"),
        )
        restricted[groups] = (_text(entry.get("header"), f"{where}.header"), reader.secret(entry, where, "value"))
    if environ.get("MINDSERVE_AUTH_RESTRICTED"):
        restricted = _restricted_text(environ["MINDSERVE_AUTH_RESTRICTED"], "MINDSERVE_AUTH_RESTRICTED")
    jwt = _jwt(section.get("jwt"), f"{origin}.jwt", reader, environ)
    certificates: dict[str, tuple] = {}
    for identity, opened, where in _named(section, "client_certificates", origin, "a mapping of identities to groups"):
        listed: Any = [opened] if isinstance(opened, str) else opened
        if not isinstance(listed, list) or not all(isinstance(g, str) for g in listed):
            raise AccessSettingError(f"{where}: expected a list of groups, got {opened!r}")
        certificates[identity] = tuple(listed)
    consumers = {}
    for key, entry, where in _named(section, "consumers", origin, "a mapping of consumer keys"):
        entry = _mapping(
            entry, where, "a mapping with secret_env, secret_file or secret", ("secret", "secret_env", "secret_file")
        )
        consumers[key] = reader.secret(entry, where, "secret")
    if environ.get("MINDSERVE_AUTH_CONSUMERS"):
        consumers = {}
        for part in filter(None, (p.strip() for p in environ["MINDSERVE_AUTH_CONSUMERS"].split(","))):
            key, colon, secret = part.partition(":")
            if not colon or not key or not secret:
                raise AccessSettingError("MINDSERVE_AUTH_CONSUMERS: expected KEY:SECRET (several joined by ',')")
            consumers[key] = secret
    ttl = section.get("token_ttl_s", 3600.0)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= 86400:
        raise AccessSettingError(f"{origin}.token_ttl_s: expected a number of seconds in (0, 86400], got {ttl!r}")
    if not (restricted or jwt or certificates or consumers):
        return None, reader.warnings
    config = AccessConfig(
        restricted=restricted, jwt=jwt, client_certificates=certificates, consumers=consumers, token_ttl_s=float(ttl)
    )
    try:
        AccessPolicy(config)  # every check the server makes at start, made now: a bad setting starts nothing
    except RuntimeError as exc:
        raise AccessSettingError(f"{origin}: {str(exc).removeprefix('access: ')}") from None
    return config, reader.warnings


def _jwt(document: Any, origin: str, reader: _Reader, environ: Mapping[str, str]) -> Optional[JWTConfig]:
    entry = dict(_mapping(document, origin, "a mapping of JWT settings", JWT_KEYS)) if document is not None else {}
    env = {
        name[len("MINDSERVE_AUTH_JWT_") :].lower(): environ[name]
        for name, _ in ENV_VARS
        if name.startswith("MINDSERVE_AUTH_JWT_") and environ.get(name)
    }
    if not entry and not env:
        return None
    secret: Optional[str] = None
    public_key: Optional[str] = None
    if "secret" in env or "secret_file" in env:
        entry = {k: v for k, v in entry.items() if k not in ("secret", "secret_env", "secret_file", "public_key_file")}
        secret = (
            env["secret"]
            if "secret" in env
            else _read_file(env["secret_file"], "MINDSERVE_AUTH_JWT_SECRET_FILE", os.getcwd())
        )
    elif "public_key_file" in env:
        entry = {k: v for k, v in entry.items() if k not in ("secret", "secret_env", "secret_file")}
        entry["public_key_file"] = env["public_key_file"]
    if secret is None and any(k in entry for k in ("secret", "secret_env", "secret_file")):
        secret = reader.secret(entry, origin, "secret")
    if "public_key_file" in entry:
        public_key = _read_file(entry["public_key_file"], f"{origin}.public_key_file", reader.base, strip=False)
    algorithms = entry.get("algorithms", ["HS256"])
    if "algorithms" in env:
        algorithms = [a.strip() for a in env["algorithms"].split(",") if a.strip()]
    if isinstance(algorithms, str):
        algorithms = [algorithms]
    if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
        raise AccessSettingError(f"{origin}.algorithms: expected a list of algorithm names, got {algorithms!r}")
    groups_claim = env.get("groups_claim", entry.get("groups_claim", "scope"))
    if isinstance(groups_claim, str) and groups_claim.lower() == "none":
        groups_claim = None
    leeway = entry.get("leeway_s", 30)
    if isinstance(leeway, bool) or not isinstance(leeway, (int, float)) or not 0 <= leeway <= 3600:
        raise AccessSettingError(f"{origin}.leeway_s: expected a number of seconds in [0, 3600], got {leeway!r}")
    return JWTConfig(
        secret=secret,
        public_key=public_key,
        algorithms=tuple(algorithms),
        audience=env.get("audience", entry.get("audience")),
        issuer=env.get("issuer", entry.get("issuer")),
        groups_claim=groups_claim,
        leeway_s=float(leeway),
    )

"""The settings of ``mindserve serve``: defaults, a YAML file, environment variables and command-line options,
each layer overriding the one before, validated into a :class:`ServeConfig` before anything starts.

Every error is a :class:`ConfigError` whose text names where the bad value came from and what was expected,
e.g. ``serving.yaml: servables[1].device_ids: expected a list of non-negative ints, got 'x'`` or
``MINDSERVE_MAX_MSG_MB_SIZE: expected an int in [1, 512], got 'big'``. Unknown keys are errors too: a
misspelt setting must not be silently ignored.

This module reads files and directories only: it never imports servable code or starts anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import yaml

from mindserve import _defaults
from mindserve._access.config import AccessConfig
from mindserve._config import MAX_MEDIA_BATCH, MediaStreamConfig
from mindserve._frontends.shared_memory.owners import OwnerError, owner_uid
from mindserve.cli.access_settings import AccessSettingError, read_access

# (every default is mindserve._defaults's, a module without imports: this one imports no server code)
DEFAULT_GRPC_ADDRESS = _defaults.GRPC_ADDRESS
DEFAULT_REST_ADDRESS = _defaults.REST_ADDRESS
DEFAULT_METRICS_ADDRESS = _defaults.METRICS_ADDRESS
DEFAULT_MAX_MSG_MB_SIZE = _defaults.MAX_MSG_MB_SIZE
DEFAULT_MAX_ENQUEUED_REQUESTS = _defaults.MAX_ENQUEUED_REQUESTS
DEFAULT_MAX_REQUEST_INSTANCES = _defaults.MAX_REQUEST_INSTANCES
DEFAULT_MAX_STREAM_MEMORY_MB = _defaults.MAX_STREAM_MEMORY_MB
MAX_STREAM_MEMORY_MB = 1 << 20
DEFAULT_DEVICE_IDS = _defaults.DEVICE_IDS
# The servables that come with a checkout (``servables/`` beside the ``mindserve`` package); an installation
# that is not editable has none there.
BUNDLED_SERVABLES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "servables"
)

TOP_KEYS = (
    "servable_directory",
    "servables",
    "grpc_address",
    "rest_address",
    "metrics",
    "tls",
    "max_msg_mb_size",
    "max_enqueued_requests",
    "max_request_instances",
    "access",
    "ava",
    "allow_client_shm",
    "client_shm_owners",
    "max_stream_memory_mb",
    "log_level",
    "port_offset",
)
AVA_KEYS = ("servable", "method", "version", "batch_size")
SERVABLE_KEYS = (
    "name",
    "directory",
    "version",
    "device_ids",
    "device_type",
    "max_batch_size",
    "max_batch_delay_ms",
    "shm_size_mb",
    "num_parallel_workers",
    "max_queue_delay_ms",
)
TLS_KEYS = ("certificate", "private_key", "ca", "verify_client")

# Environment variables, each with the setting it overrides and how its text is read. An empty variable
# counts as unset. (name, setting, help text)
ENV_VARS = (
    ("MINDSERVE_SERVABLE_DIRECTORY", "servable_directory", "folder holding the servables"),
    ("MINDSERVE_SERVABLES", "servables", "comma-separated servable names (replaces the file's list)"),
    ("MINDSERVE_DEVICE_IDS", "device_ids", "comma-separated device ids, for every servable"),
    ("MINDSERVE_DEVICE_TYPE", "device_type", "CPU, GPU or Ascend, for every servable"),
    ("MINDSERVE_GRPC_ADDRESS", "grpc_address", "host:port or unix:/path; off disables gRPC"),
    ("MINDSERVE_REST_ADDRESS", "rest_address", "host:port or unix:/path; off disables REST"),
    ("MINDSERVE_METRICS_ADDRESS", "metrics", "host:port or unix:/path of /metrics; off disables it"),
    ("MINDSERVE_ALLOW_CLIENT_SHM", "allow_client_shm", "true: clients on this host may use shared memory"),
    ("MINDSERVE_CLIENT_SHM_OWNERS", "client_shm_owners", "users whose shm files it takes too (comma-separated)"),
    ("MINDSERVE_MAX_MSG_MB_SIZE", "max_msg_mb_size", "largest request or reply, MB (1 to 512)"),
    ("MINDSERVE_MAX_ENQUEUED_REQUESTS", "max_enqueued_requests", "requests that may wait, over all servables"),
    ("MINDSERVE_MAX_REQUEST_INSTANCES", "max_request_instances", "instances one request may carry"),
    (
        "MINDSERVE_MAX_STREAM_MEMORY_MB",
        "max_stream_memory_mb",
        "memory all streams may hold: answers not yet sent, frames not yet run, MB",
    ),
    ("MINDSERVE_LOG_LEVEL", "log_level", "debug, info (the default), warning or error"),
    ("MINDSERVE_PORT_OFFSET", "port_offset", "added to the default ports, for another instance on this host"),
    ("MINDSERVE_TLS_CERTIFICATE", "tls.certificate", "server certificate (PEM); turns TLS on"),
    ("MINDSERVE_TLS_PRIVATE_KEY", "tls.private_key", "its private key (PEM)"),
    ("MINDSERVE_TLS_CA", "tls.ca", "CA certificate (PEM) that client certificates must come from"),
    ("MINDSERVE_TLS_VERIFY_CLIENT", "tls.verify_client", "true: refuse clients without a certificate from it"),
)
OPTION_NAMES = {"metrics": "metrics-address"}  # settings whose command-line option is not named after them
OFF = "off"  # an address given as text (environment, options) that disables the server
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_PORT_OFFSET = 50000  # 1500 + 50000 is still a port; more is a mistake


class ConfigError(Exception):
    """A setting that cannot be used; the text names its source and key."""


@dataclass(frozen=True)
class ServableSettings:
    """One servable (version) to start: the arguments of a ``ServableStartConfig``."""

    directory: str
    name: str
    version: int = 0
    device_ids: tuple = DEFAULT_DEVICE_IDS
    device_type: Optional[str] = None
    max_batch_size: int = _defaults.MAX_BATCH_SIZE
    max_batch_delay_ms: float = _defaults.MAX_BATCH_DELAY_MS
    shm_size_mb: int = _defaults.SHM_SIZE_MB
    num_parallel_workers: int = _defaults.NUM_PARALLEL_WORKERS  # processes for Python stages, device workers too
    max_queue_delay_ms: float = _defaults.MAX_QUEUE_DELAY_MS  # how long a request's work may wait to start


@dataclass(frozen=True)
class TLSSettings:
    """The server's TLS files (absolute paths); ``verify_client`` asks for client certificates from ``ca``."""

    certificate: str
    private_key: str
    ca: Optional[str] = None
    verify_client: bool = False


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``mindserve serve`` starts. An address of None means that server is off."""

    servables: tuple
    grpc_address: Optional[str] = DEFAULT_GRPC_ADDRESS
    rest_address: Optional[str] = DEFAULT_REST_ADDRESS
    metrics_address: Optional[str] = DEFAULT_METRICS_ADDRESS
    media_stream: Optional[MediaStreamConfig] = None  # what a video-analytics stream runs unless it says
    allow_client_shm: bool = False  # clients' system shared memory on the gRPC and REST servers
    client_shm_owners: tuple = ()  # users (names or uids) whose files clients may name, besides the server's
    tls: Optional[TLSSettings] = None
    max_msg_mb_size: int = DEFAULT_MAX_MSG_MB_SIZE
    max_enqueued_requests: int = DEFAULT_MAX_ENQUEUED_REQUESTS
    max_request_instances: int = DEFAULT_MAX_REQUEST_INSTANCES
    max_stream_memory_mb: int = DEFAULT_MAX_STREAM_MEMORY_MB
    log_level: str = "info"  # of the master's log lines (``mindserve`` logger)
    access: Optional[AccessConfig] = None
    warnings: tuple = ()  # what the settings do that works but should not be done (a secret in the file)


@dataclass
class _Setting:
    """A raw value and where it came from: ``origin`` prefixes its errors; ``base`` is the folder that a
    relative path in it is relative to (the YAML file's folder, or the current directory)."""

    value: Any
    origin: str
    base: str


def _fail(setting: _Setting, expected: str) -> ConfigError:
    return ConfigError(f"{setting.origin}: expected {expected}, got {setting.value!r}")


# ---- checks of single values; each returns the clean value or raises ConfigError naming the setting ----


def _int(setting: _Setting, low: int, high: Optional[int] = None) -> int:
    value = setting.value
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value and (high is None or value <= high)
    if not ok:
        raise _fail(setting, f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}")
    return value


def _number(setting: _Setting, low: float, high: float) -> float:
    value = setting.value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _fail(setting, f"a number in [{low:g}, {high:g}]")
    return float(value)


def _text(setting: _Setting) -> str:
    if not isinstance(setting.value, str) or not setting.value:
        raise _fail(setting, "a non-empty string")
    return setting.value


def _bool(setting: _Setting) -> bool:
    if not isinstance(setting.value, bool):
        raise _fail(setting, "true or false")
    return setting.value


def _path(setting: _Setting) -> str:
    return os.path.normpath(os.path.join(setting.base, os.path.expanduser(_text(setting))))


def _file(setting: _Setting) -> str:
    path = _path(setting)
    if not os.path.isfile(path):
        raise ConfigError(f"{setting.origin}: file '{path}' does not exist")
    return path


def _address(setting: _Setting) -> Optional[str]:
    """None (off) for null, false or the text "off" (any case: a quoted "off" in YAML, as the environment and the
    options take it); else a ``host:port`` with a port in 1..65535 or a ``unix:/path``."""
    value = setting.value
    if value is None or value is False or (isinstance(value, str) and value.lower() == OFF):
        return None
    if isinstance(value, str):
        if value.startswith("unix:"):
            if len(value) > len("unix:"):
                return value
        else:
            host, _, port = value.rpartition(":")
            if host and port.isdigit() and 1 <= int(port) <= 65535:
                return value
    raise _fail(setting, "'host:port' or 'unix:/path'")


def _log_level(setting: _Setting) -> str:
    value = setting.value
    if isinstance(value, str) and value.lower() in LOG_LEVELS:
        return value.lower()
    raise _fail(setting, f"one of {', '.join(LOG_LEVELS)}")


def _offset_port(address: str, offset: int) -> str:
    """A default ``host:port`` with ``offset`` added to its port."""
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + offset}"


def _media_stream(setting: _Setting) -> Optional[MediaStreamConfig]:
    """The ``ava:`` section: the servable method a video-analytics stream runs when its descriptor names none."""
    value = setting.value
    if value is None:
        return None
    _check_keys(
        _mapping(value, setting.origin, "a mapping with servable, method, version, batch_size"),
        AVA_KEYS,
        f"{setting.origin}.",
    )
    for key in ("servable", "method"):
        if key not in value:
            raise ConfigError(f"{setting.origin}: missing key '{key}'")
        if not isinstance(value[key], str) or not value[key]:
            raise _fail(_Setting(value[key], f"{setting.origin}.{key}", setting.base), "a name")
    version = _int(_Setting(value.get("version", 0), f"{setting.origin}.version", setting.base), 0)
    batch = _int(_Setting(value.get("batch_size", 1), f"{setting.origin}.batch_size", setting.base), 1, MAX_MEDIA_BATCH)
    return MediaStreamConfig(value["servable"], value["method"], version, batch)


def _owners(setting: _Setting) -> tuple:
    """``client_shm_owners``: user names of this host or uids (null or [] for none)."""
    value = setting.value
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _fail(setting, "a list of user names or uids")
    for owner in value:
        try:
            owner_uid(owner)
        except OwnerError as exc:
            raise ConfigError(f"{setting.origin}: {exc}") from None
    return tuple(value)


def _device_ids(setting: _Setting) -> tuple:
    value = setting.value
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]  # one device may be written without a list
    if (
        not isinstance(value, list)
        or not value
        or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in value)
    ):
        raise _fail(setting, "a list of non-negative ints")
    if len(set(value)) != len(value):
        raise ConfigError(f"{setting.origin}: device ids must differ, got {value!r}")
    return tuple(value)


def _device_type(setting: _Setting) -> Optional[str]:
    value = setting.value
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in ("cpu", "gpu", "ascend"):
        raise _fail(setting, "CPU, GPU, Ascend or null")
    return value


# ---- reading the layers ----


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (the second would
    silently win otherwise)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def _check_keys(mapping: dict, known: tuple, prefix: str) -> None:
    for key in mapping:
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown key (known keys: {', '.join(known)})")


def _mapping(value: Any, origin: str, what: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{origin}: expected {what}, got {value!r}")
    return value


def _list_of_ints(text: str) -> Any:
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        return text  # left as text, so that the check reports it as given


def _owners_text(text: str) -> Any:
    """Comma-separated owners: an all-digit one is a uid, any other a user name."""
    owners: list[Any] = [item.strip() for item in text.split(",")]
    return [int(item) if item.isascii() and item.isdigit() else item for item in owners]


def _int_text(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return text


def _bool_text(text: str) -> Any:
    return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower(), text)


def _address_text(text: str) -> Any:
    return None if text.lower() == OFF else text


# how the text of an environment variable or option becomes the value a YAML file would give
_TEXT_READERS: dict[str, Callable[[str], Any]] = {
    "device_ids": _list_of_ints,
    "max_msg_mb_size": _int_text,
    "max_enqueued_requests": _int_text,
    "max_request_instances": _int_text,
    "max_stream_memory_mb": _int_text,
    "port_offset": _int_text,
    "tls.verify_client": _bool_text,
    "grpc_address": _address_text,
    "rest_address": _address_text,
    "metrics": _address_text,
    "allow_client_shm": _bool_text,
    "client_shm_owners": _owners_text,
}


class _Layers:
    """The raw settings with their origins, as later layers override earlier ones."""

    def __init__(self, cwd: str):
        self.cwd = cwd
        self.top: dict[str, _Setting] = {}
        self.tls: dict[str, _Setting] = {}
        self.tls_origin = ""  # where the TLS settings were given: a missing one is reported there
        self.servables: Optional[list[dict[str, _Setting]]] = None  # None: serve every servable found
        self.servables_origin = ""
        self.every_servable: dict[str, _Setting] = {}  # device_ids / device_type for all servables
        # the access section as the file gives it (its origin names the environment when there is none)
        self.access = _Setting(None, "access settings", cwd)

    def read_file(self, path: str) -> None:
        base = os.path.dirname(os.path.abspath(path))
        document = _read_yaml(path)
        if document is None:
            return  # an empty file: all defaults
        _check_keys(_mapping(document, path, "a mapping of settings at the top level"), TOP_KEYS, f"{path}: ")
        for key, value in document.items():
            origin = f"{path}: {key}"
            if key == "tls":
                if value is not None:  # tls: null is no TLS
                    _check_keys(
                        _mapping(value, origin, "a mapping with certificate, private_key, ca, verify_client"),
                        TLS_KEYS,
                        f"{origin}.",
                    )
                    self.tls = {k: _Setting(v, f"{origin}.{k}", base) for k, v in value.items()}
                    self.tls_origin = origin
            elif key == "servables":
                self._read_servables(value, origin, base)
            elif key == "access":
                self.access = _Setting(value, origin, base)
            elif key == "servable_directory" and value is None:
                continue  # null: the default directory
            else:
                self.top[key] = _Setting(value, origin, base)

    def _read_servables(self, value: Any, origin: str, base: str) -> None:
        if value is None or value == []:
            return  # as if absent: serve every servable found
        if not isinstance(value, list):
            raise ConfigError(f"{origin}: expected a list of servables, got {value!r}")
        entries = []
        for i, item in enumerate(value):
            item_origin = f"{origin}[{i}]"
            if isinstance(item, str):
                item = {"name": item}  # a bare name: default settings
            if not isinstance(item, dict):
                raise ConfigError(f"{item_origin}: expected a servable name or a mapping of its settings, got {item!r}")
            _check_keys(item, SERVABLE_KEYS, f"{item_origin}.")
            if "name" not in item:
                raise ConfigError(f"{item_origin}: missing key 'name'")
            entry = {k: _Setting(v, f"{item_origin}.{k}", base) for k, v in item.items()}
            entry[""] = _Setting(item, item_origin, base)  # the entry itself, for errors about all of it
            entries.append(entry)
        self.servables, self.servables_origin = entries, origin

    def read_text(self, key: str, text: str, origin: str) -> None:
        """One setting given as text (an environment variable or a command-line option)."""
        value = _TEXT_READERS.get(key, lambda t: t)(text)
        setting = _Setting(value, origin, self.cwd)
        if key == "servables":
            names = [name.strip() for name in text.split(",")]
            self.servables = [{"name": _Setting(name, origin, self.cwd), "": setting} for name in names]
            self.servables_origin = origin
        elif key in ("device_ids", "device_type"):
            self.every_servable[key] = setting
        elif key.startswith("tls."):
            self.tls[key[len("tls.") :]] = setting
            self.tls_origin = self.tls_origin or origin
        else:
            self.top[key] = setting


# ---- from the layers to a ServeConfig ----


def default_servable_directory(cwd: str, bundled: str = BUNDLED_SERVABLES) -> str:
    """``servables/`` in the current directory when there is one, else the checkout's bundled servables."""
    for candidate in (os.path.join(cwd, "servables"), bundled):
        if os.path.isdir(candidate):
            return os.path.normpath(candidate)
    raise ConfigError(
        f"no servable directory: neither '{os.path.join(cwd, 'servables')}' nor the bundled "
        f"'{bundled}' exists; give one with --servable-directory, MINDSERVE_SERVABLE_DIRECTORY "
        f"or servable_directory in a --config file"
    )


def _is_servable(directory: str, name: str) -> bool:
    return os.path.isfile(os.path.join(directory, name, "servable_config.py"))


def _directory(setting: _Setting) -> str:
    path = _path(setting)
    if not os.path.isdir(path):
        raise ConfigError(f"{setting.origin}: directory '{path}' does not exist")
    return path


def _version_folders(path: str) -> list[int]:
    """The servable's version numbers, as the server reads them (all-digit folder names, > 0)."""
    return sorted(
        int(e)
        for e in os.listdir(path)
        if e.isdigit() and e.isascii() and int(e) > 0 and os.path.isdir(os.path.join(path, e))
    )


class _Resolver:
    def __init__(self, layers: _Layers, bundled: str):
        self.layers = layers
        self.bundled = bundled
        self._directory: Optional[str] = None

    def servable_directory(self) -> str:
        """The top-level servable directory, looked up only when some servable needs it."""
        if self._directory is None:
            setting = self.layers.top.get("servable_directory")
            self._directory = (
                _directory(setting) if setting else default_servable_directory(self.layers.cwd, self.bundled)
            )
        return self._directory

    def servables(self) -> tuple:
        layers = self.layers
        entries = layers.servables
        if entries is None:  # none listed: every servable in the directory, with default settings
            directory = self.servable_directory()
            origin = (
                layers.top["servable_directory"].origin if "servable_directory" in layers.top else "servable directory"
            )
            names = sorted(n for n in os.listdir(directory) if _is_servable(directory, n))
            if not names:
                raise ConfigError(
                    f"{origin}: no servables in '{directory}' (a servable is a folder holding servable_config.py)"
                )
            entries = [{"name": _Setting(n, origin, layers.cwd), "": _Setting(n, origin, layers.cwd)} for n in names]
        result: list[ServableSettings] = []
        seen: dict[tuple, str] = {}
        for entry in entries:
            entry = {**entry, **layers.every_servable}
            settings = self._servable(entry)
            key = (settings.directory, settings.name, settings.version)
            if key in seen:
                raise ConfigError(
                    f"{entry[''].origin}: servable '{settings.name}' version {settings.version} "
                    f"is already listed as {seen[key]}"
                )
            seen[key] = entry[""].origin
            result.append(settings)
        return tuple(result)

    def _servable(self, entry: dict[str, _Setting]) -> ServableSettings:
        name = _text(entry["name"])
        if "/" in name or name in (".", ".."):
            raise _fail(entry["name"], "a servable name (a folder name)")
        directory = _directory(entry["directory"]) if "directory" in entry else self.servable_directory()
        if not _is_servable(directory, name):
            raise ConfigError(
                f"{entry['name'].origin}: no servable '{name}' in '{directory}' (no file "
                f"'{os.path.join(directory, name, 'servable_config.py')}')"
            )
        version = 0
        if "version" in entry:
            version = _int(entry["version"], 0)
            # 0 is the newest version; another must have its folder (the server would refuse it later)
            if version and version not in _version_folders(os.path.join(directory, name)):
                raise ConfigError(
                    f"{entry['version'].origin}: servable '{name}' has no version folder "
                    f"'{os.path.join(directory, name, str(version))}'"
                )
        elif _version_folders(os.path.join(directory, name)):
            version = _version_folders(os.path.join(directory, name))[-1]
        return ServableSettings(
            directory=directory,
            name=name,
            version=version,
            device_ids=_device_ids(entry["device_ids"]) if "device_ids" in entry else DEFAULT_DEVICE_IDS,
            device_type=_device_type(entry["device_type"]) if "device_type" in entry else None,
            max_batch_size=_int(entry["max_batch_size"], 0, 1 << 20)
            if "max_batch_size" in entry
            else _defaults.MAX_BATCH_SIZE,
            max_batch_delay_ms=_number(entry["max_batch_delay_ms"], 0, 60000)
            if "max_batch_delay_ms" in entry
            else _defaults.MAX_BATCH_DELAY_MS,
            shm_size_mb=_int(entry["shm_size_mb"], 4, 1 << 20) if "shm_size_mb" in entry else _defaults.SHM_SIZE_MB,
            num_parallel_workers=_int(entry["num_parallel_workers"], 0, 64)
            if "num_parallel_workers" in entry
            else _defaults.NUM_PARALLEL_WORKERS,
            max_queue_delay_ms=_number(entry["max_queue_delay_ms"], 0, 3_600_000)
            if "max_queue_delay_ms" in entry
            else _defaults.MAX_QUEUE_DELAY_MS,
        )

    def tls(self) -> Optional[TLSSettings]:
        tls = self.layers.tls
        if not tls:
            return None
        for key in ("certificate", "private_key"):
            if key not in tls:
                raise ConfigError(f"{self._missing_origin(key)}: missing (TLS needs a certificate and a private_key)")
        ca = _file(tls["ca"]) if "ca" in tls and tls["ca"].value is not None else None
        verify_client = _bool(tls["verify_client"]) if "verify_client" in tls else False
        if verify_client and ca is None:
            raise ConfigError(
                f"{tls['verify_client'].origin}: verify_client needs a ca (the CA that client certificates come from)"
            )
        return TLSSettings(
            certificate=_file(tls["certificate"]),
            private_key=_file(tls["private_key"]),
            ca=ca,
            verify_client=verify_client,
        )

    def _missing_origin(self, key: str) -> str:
        """Where a missing TLS setting should have been: the file's tls section, or its variable."""
        origin = self.layers.tls_origin
        if origin.startswith("MINDSERVE_"):
            return f"MINDSERVE_TLS_{key.upper()}"
        return f"{origin}.{key}"


def load_config(
    config_file: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
    options: Optional[Mapping[str, Optional[str]]] = None,
    cwd: Optional[str] = None,
    bundled_directory: str = BUNDLED_SERVABLES,
) -> ServeConfig:
    """The validated settings of ``mindserve serve``; raises ConfigError naming the first bad one.

    Args:
        config_file: a YAML file (its relative paths are relative to its own folder), or None.
        environ: the environment (``os.environ`` when None); the variables are those of ``ENV_VARS`` and
            ``access_settings.ENV_VARS``.
        options: command-line options given as text, by setting name (``servable_directory``,
            ``grpc_address``, ``rest_address``); None values are options not given.
        cwd: the folder relative paths in the environment and options are relative to (the current one when
            None); also where the default ``servables/`` is looked for.
        bundled_directory: the default servable directory when ``cwd`` has no ``servables/``.
    """
    environ = os.environ if environ is None else environ
    layers = _Layers(os.path.abspath(cwd or os.getcwd()))
    if config_file is not None:
        layers.read_file(config_file)
    for name, key, _ in ENV_VARS:
        if environ.get(name):
            layers.read_text(key, environ[name], name)
    for key, text in (options or {}).items():
        if text is not None:
            layers.read_text(key, text, f"--{OPTION_NAMES.get(key, key.replace('_', '-'))}")
    top = layers.top
    resolver = _Resolver(layers, bundled_directory)
    # port_offset moves the default addresses (another instance on this host); an address given is used as given
    offset = _int(top["port_offset"], 0, MAX_PORT_OFFSET) if "port_offset" in top else 0
    grpc_address = (
        _address(top["grpc_address"]) if "grpc_address" in top else _offset_port(DEFAULT_GRPC_ADDRESS, offset)
    )
    rest_address = (
        _address(top["rest_address"]) if "rest_address" in top else _offset_port(DEFAULT_REST_ADDRESS, offset)
    )
    if grpc_address is None and rest_address is None:
        raise ConfigError("grpc_address and rest_address are both off: nothing would answer requests")
    if grpc_address is not None and grpc_address == rest_address:
        raise ConfigError(f"{top['rest_address'].origin}: the same address as grpc_address ({grpc_address})")
    metrics_address = _address(top["metrics"]) if "metrics" in top else _offset_port(DEFAULT_METRICS_ADDRESS, offset)
    for other, name in ((grpc_address, "grpc_address"), (rest_address, "rest_address")):
        if metrics_address is not None and metrics_address == other:
            raise ConfigError(
                f"{top['metrics'].origin if 'metrics' in top else 'metrics'}: the same address as {name} ({other})"
            )
    try:
        access, warnings = read_access(layers.access.value, layers.access.origin, layers.access.base, environ)
    except AccessSettingError as exc:
        raise ConfigError(str(exc)) from None
    return ServeConfig(
        access=access,
        warnings=tuple(warnings),
        grpc_address=grpc_address,
        rest_address=rest_address,
        metrics_address=metrics_address,
        media_stream=_media_stream(top["ava"]) if "ava" in top else None,
        allow_client_shm=_bool(top["allow_client_shm"]) if "allow_client_shm" in top else False,
        client_shm_owners=_owners(top["client_shm_owners"]) if "client_shm_owners" in top else (),
        max_msg_mb_size=_int(top["max_msg_mb_size"], 1, 512) if "max_msg_mb_size" in top else DEFAULT_MAX_MSG_MB_SIZE,
        max_enqueued_requests=_int(top["max_enqueued_requests"], 1)
        if "max_enqueued_requests" in top
        else DEFAULT_MAX_ENQUEUED_REQUESTS,
        max_request_instances=_int(top["max_request_instances"], 1)
        if "max_request_instances" in top
        else DEFAULT_MAX_REQUEST_INSTANCES,
        max_stream_memory_mb=_int(top["max_stream_memory_mb"], 1, MAX_STREAM_MEMORY_MB)
        if "max_stream_memory_mb" in top
        else DEFAULT_MAX_STREAM_MEMORY_MB,
        log_level=_log_level(top["log_level"]) if "log_level" in top else "info",
        tls=resolver.tls(),
        servables=resolver.servables(),
    )

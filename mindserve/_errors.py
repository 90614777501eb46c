"""The errors a request can end with: one typed family, raised below the frontends, that each transport maps to
its answer from one table (gRPC status, HTTP status; MSService replies carry ``code``).

| type | what happened | MSService code | gRPC | HTTP |
|---|---|---|---|---|
| InvalidInput | a malformed request, or inputs the method cannot take | 2 | INVALID_ARGUMENT | 400 |
| NotServed | no such servable, version, method or model | 5 (2 for a method) | NOT_FOUND | 404 |
| NoLiveWorker | served, but no worker is alive to run it now | 5 | UNAVAILABLE | 503 |
| QueueFull | the bound on waiting requests is reached: retry later | 1 | RESOURCE_EXHAUSTED | 429 |
| StageFailed | a stage or model of the servable failed | 1 or 3 | INTERNAL | 500 |
| WorkerLost | the worker running the request died | 4 | UNAVAILABLE | 503 |
| Internal | a defect of the server | 3 | INTERNAL | 500 |
| Unauthenticated | no valid credentials for a guarded group | - | UNAUTHENTICATED | 401 |
| PermissionDenied | valid credentials that do not open the group | - | PERMISSION_DENIED | 403 |
| KeyRequired | a restricted group's key missing or wrong (Triton's answer) | - | UNAUTHENTICATED | 403 |
| AlreadyExists | a name already taken (a shared memory region registered twice) | 2 | ALREADY_EXISTS | 400 |
| FeatureDisabled | a feature this server was started without (client shared memory) | 1 | UNAVAILABLE | 400 |
| DeadlineExceeded | the request's deadline passed before its work ran (dropped) | 1 | DEADLINE_EXCEEDED | 504 |
| Cancelled | the client gave up on the request (its queued work was dropped) | 1 | CANCELLED | 499 |

The access errors end a call before any message is read, so no MSService reply carries them.

A plain ``ServingError(code, message)`` (what a worker's reply carries) is answered by its code: see ``kind_of``.
"""

from __future__ import annotations

from typing import Optional, Sequence

SUCCESS = 0
FAILED = 1
INVALID_INPUTS = 2
SYSTEM_ERROR = 3
WORKER_UNAVAILABLE = 4
SERVABLE_UNAVAILABLE = 5


class ServingError(Exception):
    """An error answered to the client as ``(code, message)``."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class _Typed(ServingError):
    """A ServingError of a kind: its MSService code is the kind's unless given."""

    CODE = FAILED

    def __init__(self, message: str, code: Optional[int] = None):
        super().__init__(self.CODE if code is None else code, message)


class InvalidInput(_Typed):
    """A malformed request, or inputs the method cannot take."""

    CODE = INVALID_INPUTS


class NotServed(_Typed):
    """No such servable, version, method or model is served."""

    CODE = SERVABLE_UNAVAILABLE


class NoLiveWorker(_Typed):
    """The servable version is served but has no live worker now."""

    CODE = SERVABLE_UNAVAILABLE


class QueueFull(_Typed):
    """The bound on requests waiting to be processed is reached; the server is healthy, retry later."""

    CODE = FAILED


class StageFailed(_Typed):
    """A stage or model of the servable failed on the request."""

    CODE = SYSTEM_ERROR


class Unauthenticated(_Typed):
    """A request of a guarded group without valid credentials (none, malformed, expired, wrong signature)."""


class PermissionDenied(_Typed):
    """Valid credentials that do not open the request's group."""


class KeyRequired(_Typed):
    """A restricted group's header (metadata key) missing or wrong: HTTP 403 and gRPC UNAUTHENTICATED, as
    Triton answers its restricted APIs."""


class AlreadyExists(_Typed):
    """A name that is already taken (a shared memory region registered twice)."""

    CODE = INVALID_INPUTS


class FeatureDisabled(_Typed):
    """A request for a feature the server was started without (client shared memory)."""


class DeadlineExceeded(_Typed):
    """The request's deadline (a gRPC deadline, KServe's ``timeout`` parameter) passed before its work could run:
    queued work is dropped, never started."""


class Cancelled(_Typed):
    """The client gave up on the request (a cancelled call): its queued work is dropped, never started."""


class WorkerLost(_Typed):
    """The worker running the request died before it answered."""

    CODE = WORKER_UNAVAILABLE


class Internal(_Typed):
    """A defect of the server itself."""

    CODE = SYSTEM_ERROR


# codes a worker's reply carries for work it dropped unstarted; the master's only (never on the wire: the
# errors they become answer with FAILED)
DROPPED_DEADLINE = 6
DROPPED_CANCELLED = 7
DROPPED_DEADLINE_TEXT = "the request's deadline, or the servable's max_queue_delay_ms, passed before its work started"
DROPPED_CANCELLED_TEXT = "the request was cancelled before its work started"

_KIND_OF_CODE: dict[int, type[_Typed]] = {
    INVALID_INPUTS: InvalidInput,
    WORKER_UNAVAILABLE: WorkerLost,
    SERVABLE_UNAVAILABLE: NoLiveWorker,
}


def kind_of(error: ServingError) -> type[ServingError]:
    """The kind a transport answers ``error`` as: its type when typed, else the kind of its code (a failure of a
    stage for the others)."""
    kind = type(error)
    if kind is ServingError:
        return _KIND_OF_CODE.get(error.code, StageFailed)
    return kind


def from_worker(code: int, message: str) -> ServingError:
    """An error a worker's reply carries, typed by its code (the wire carries only code and text)."""
    if code == DROPPED_DEADLINE:
        return DeadlineExceeded(message)
    if code == DROPPED_CANCELLED:
        return Cancelled(message)
    kind = _KIND_OF_CODE.get(code, StageFailed)
    return kind(message, code)


# How much of a client's string an error text repeats: a name of a megabyte must not become a reply of one
# (gRPC refuses status details past its metadata limit, and logs and terminals choke on them).
CLIENT_TEXT_LIMIT = 128


def clip(text: object, limit: int = CLIENT_TEXT_LIMIT) -> str:
    """A client's string as an error text repeats it: whole when short, else its first ``limit`` characters and
    an ellipsis that says how long it was."""
    text = str(text)
    clipped = text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
    # bytes that were not UTF-8 (a header decoded with surrogate escapes, say) shown as escapes: every text of
    # an error must encode
    return clipped.encode("utf-8", "backslashreplace").decode("utf-8")


def request_repr(name: str, method: str, version: int) -> str:
    """How error texts name a request, as MindSpore Serving writes it: ``servable(add) method(add_common) ``
    (client strings clipped)."""
    text = f"servable({clip(name)}) method({clip(method)}) "
    return text + f"version({version}) " if version > 0 else text


def servable_unavailable(name: str, method: str, version: int, served: bool = True, detail: str = "") -> ServingError:
    """MindSpore Serving's "servable is not available": NoLiveWorker for a version that is served but has no live
    worker, NotServed (``served`` False) for one that is not served at all; ``detail`` (what is served instead)
    follows MindSpore's text, which clients may match, after a colon."""
    kind = NoLiveWorker if served else NotServed
    return kind(
        f"Request {request_repr(name, method, version)}, servable is not available" + (f": {detail}" if detail else "")
    )


NAMES_SHOWN = 8  # how many of a client's names an error text lists


def names_list(names: Sequence[str]) -> str:
    """A client's names as an error text lists them: each clipped, at most NAMES_SHOWN, and how many in all."""
    if not names:
        return "none"
    shown = ", ".join(clip(name, 64) for name in names[:NAMES_SHOWN])
    return shown if len(names) <= NAMES_SHOWN else f"{shown}, ... ({len(names)} in all)"


def missing_input(
    name: str, where: str, servable: str, method: str, inputs: Sequence[str], given: Sequence[str]
) -> ServingError:
    """MindSpore Serving's "Cannot find input" (``where``: "instance input", "request inputs"), then what the
    method takes and what the client gave, sorted (a misspelt name is seen at once)."""
    holder = "instance" if where.startswith("instance") else "request"
    return InvalidInput(
        f"Cannot find input {name} in {where} , servable {clip(servable)}, method {clip(method)}: "
        f"the method takes {', '.join(inputs)}; the {holder} gives {names_list(sorted(given))}"
    )


def unexpected_input(name: str, servable: str, method: str, inputs: Sequence[str]) -> ServingError:
    """An instance input the method does not take (a misspelt name would otherwise be ignored silently)."""
    return InvalidInput(
        f"Unexpected input {clip(name)} in instance input , servable {clip(servable)}, method "
        f"{clip(method)} takes {', '.join(inputs)}"
    )


def method_unavailable(name: str, method: str, version: int, methods: Sequence[str] = ()) -> ServingError:
    """MindSpore Serving's "method is not available" (its code is INVALID_INPUTS, as MSService replies have it),
    followed by the servable's methods."""
    listed = f": servable {clip(name)} has methods {', '.join(methods)}" if methods else ""
    return NotServed(f"Request {request_repr(name, method, version)}, method is not available{listed}", INVALID_INPUTS)

"""Error codes of the wire contract (``ErrorMsg.error_code``) and the error type that carries one."""

SUCCESS = 0
FAILED = 1
INVALID_INPUTS = 2
SYSTEM_ERROR = 3
WORKER_UNAVAILABLE = 4
SERVABLE_UNAVAILABLE = 5

# How a full request queue is answered (a ServingError whose message starts with this): frontends tell it from
# other errors by this text, since the wire contract has no error code of its own for it (the Open Inference
# Protocol frontend answers it with RESOURCE_EXHAUSTED).
QUEUE_FULL_MESSAGE_PREFIX = "Serving Error: enqueued requests count exceeds the limit"


class ServingError(Exception):
    """An error answered to the client as ``(code, message)``."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


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


def servable_unavailable(name: str, method: str, version: int) -> ServingError:
    return ServingError(SERVABLE_UNAVAILABLE, f"Request {request_repr(name, method, version)}, servable is not available")

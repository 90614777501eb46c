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


def request_repr(name: str, method: str, version: int) -> str:
    """How error texts name a request, as MindSpore Serving writes it: ``servable(add) method(add_common) ``."""
    text = f"servable({name}) method({method}) "
    return text + f"version({version}) " if version > 0 else text


def servable_unavailable(name: str, method: str, version: int) -> ServingError:
    return ServingError(SERVABLE_UNAVAILABLE, f"Request {request_repr(name, method, version)}, servable is not available")

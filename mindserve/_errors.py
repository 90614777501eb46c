"""Error codes of the wire contract (``ErrorMsg.error_code``) and the error type that carries one."""

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

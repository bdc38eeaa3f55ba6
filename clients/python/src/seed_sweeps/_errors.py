"""The package's own exceptions: every failure it reports is one of these (never a bare KeyError)."""
from typing import Optional


class SweepError(Exception):
    """Anything the package could not do; the message says what to do."""


class ConnectionFailed(SweepError):
    """The coordinator could not be reached (wrong URL, not running, a network in between)."""


class VersionMismatch(SweepError):
    """The coordinator speaks an API this package was not written for."""


class ApiError(SweepError):
    """The coordinator refused a request: `status` is its HTTP status, `message` its reason (which
    names the field at fault for a 422)."""

    def __init__(self, status: int, message: str, method: str = "", path: str = "") -> None:
        self.status = status
        self.message = message
        self.method = method
        self.path = path
        where = f" ({method} {path})" if method else ""
        super().__init__(f"{status}: {message}{where}")


class Unauthorized(ApiError):
    """401 or 403: the token is missing, wrong, or lacks the right (SWEEP_TOKEN, or Client(token=))."""


class NotFound(ApiError):
    """404: no such sweep, job or route."""


class InvalidSpec(ApiError):
    """400 or 422: the coordinator read the request and found it wrong; the message names the field."""


class TrialPruned(SweepError):
    """Raised by an objective (or by `Trial.report`'s caller) to end its trial as pruned, as
    `optuna.TrialPruned` does."""


def error_for(status: int, message: str, method: str = "", path: str = "") -> ApiError:
    """The exception class for an HTTP status."""
    cls = {400: InvalidSpec, 401: Unauthorized, 403: Unauthorized, 404: NotFound, 422: InvalidSpec}.get(
        status, ApiError
    )
    return cls(status, message, method, path)


def hint(status: int) -> Optional[str]:
    """What to do about a status, said after the coordinator's own message."""
    if status == 401:
        return "set SWEEP_TOKEN (or Client(token=...)) to the coordinator's admin or worker token"
    return None

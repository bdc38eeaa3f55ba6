"""The one HTTP session a Client holds: the token, the API version check, and the coordinator's
refusals turned into the package's exceptions."""
import json
from typing import Any, Dict, Optional, Tuple

import requests

from ._errors import ConnectionFailed, SweepError, VersionMismatch, error_for, hint

#: The REST API this package speaks (protocol::API_VERSION): a coordinator of the same major and at
#: least this minor serves it.
API_VERSION = "1.1"


def _version(text: str) -> Tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def check_version(theirs: Optional[str], url: str) -> None:
    """Raise VersionMismatch unless a coordinator speaking `theirs` serves this package's API."""
    if theirs is None:
        raise VersionMismatch(
            f"the coordinator at {url} states no API version (it predates {API_VERSION}'s ask and tell): "
            f"upgrade it, or use a seed-sweeps release written for it"
        )
    try:
        ours, got = _version(API_VERSION), _version(theirs)
    except ValueError:
        raise VersionMismatch(f"the coordinator at {url} states API version {theirs!r}, which is not MAJOR.MINOR") from None
    if got[0] != ours[0] or got[1] < ours[1]:
        newer = "the coordinator" if got < ours else "this package"
        raise VersionMismatch(
            f"this package speaks the coordinator's API {API_VERSION}; the coordinator at {url} speaks {theirs}. "
            f"{newer.capitalize()} is older: upgrade it (pip install ./clients/python from the coordinator's checkout "
            f"gives the matching package)"
        )


class Http:
    """Requests to one coordinator, with its token."""

    def __init__(self, url: str, token: Optional[str], timeout: float) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def health(self) -> Optional[str]:
        """The coordinator's API version (None when it states none)."""
        r = self._send("GET", "/healthz", headers={"Accept": "application/json"})
        if r.status_code != 200:
            raise SweepError(f"{self.url}/healthz answered {r.status_code}: is this a sweep coordinator?")
        return r.headers.get("x-api-version")

    def _send(self, method: str, path: str, **kw: Any) -> requests.Response:
        try:
            return self.session.request(method, self.url + path, timeout=kw.pop("timeout", self.timeout), **kw)
        except requests.exceptions.ConnectionError as e:
            raise ConnectionFailed(
                f"cannot reach the coordinator at {self.url} ({type(e).__name__}): is `server serve` running "
                f"there? (set SWEEP_SERVER or Client(url=...))"
            ) from None
        except requests.exceptions.Timeout:
            raise ConnectionFailed(f"the coordinator at {self.url} did not answer {method} {path} within {self.timeout} s") from None
        except requests.exceptions.RequestException as e:
            raise ConnectionFailed(f"{method} {self.url}{path}: {e}") from None

    def call(self, method: str, path: str, *, ok_empty: bool = False, **kw: Any) -> requests.Response:
        """One request; a refusal raises the package's exception with the coordinator's reason."""
        r = self._send(method, path, **kw)
        if r.status_code >= 400:
            try:
                message = r.json().get("error") or r.text
            except ValueError:
                message = r.text.strip() or r.reason
            extra = hint(r.status_code)
            if extra:
                message = f"{message} ({extra})"
            raise error_for(r.status_code, message, method, path)
        if r.status_code == 204 and not ok_empty:
            raise SweepError(f"{method} {path}: the coordinator answered nothing (204)")
        return r

    def json(self, method: str, path: str, **kw: Any) -> Any:
        r = self.call(method, path, **kw)
        try:
            return r.json()
        except ValueError:
            raise SweepError(f"{method} {path}: the answer is not JSON: {r.text[:200]!r}") from None


def dumps(doc: Dict[str, Any]) -> str:
    """JSON as the coordinator reads it: NaN becomes null (JSON has no NaN); infinities are refused."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and v != v:
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    try:
        return json.dumps(clean(doc), allow_nan=False)
    except ValueError:
        raise SweepError("an infinite number cannot be sent (JSON has none): send a finite value, or NaN") from None

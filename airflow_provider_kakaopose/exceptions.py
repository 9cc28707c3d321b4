"""Errors raised by the Kakao Pose provider.

Every error carries the HTTP ``status_code``, the Kakao ``code`` and ``msg`` when the service gave them. No
error message ever contains the API key or request headers.

:class:`KakaoPoseError` subclasses Airflow's ``AirflowException`` when Airflow is installed, and plain
``Exception`` otherwise, so the pure parts (tables, validation) work in a notebook without Airflow.
"""

from __future__ import annotations

try:  # Airflow's AirflowException on every version (2.11: airflow.exceptions, 3.x: the Task SDK's)
    from airflow_provider_kakaopose._compat import AirflowException as _Base
except ImportError:  # pragma: no cover - exercised only without Airflow (a notebook reading tables)
    _Base = Exception  # type: ignore[assignment,misc]


class KakaoPoseError(_Base):
    """Any failure talking to the Pose API or reading its answers."""

    #: The Pose API's HTTP status (None when no answer came). It replaces AirflowException's own
    #: ``status_code`` (an ``HTTPStatus`` for Airflow's API answers), hence the different type.
    status_code: int | None  # type: ignore[assignment]

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: int | None = None,
        msg: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.msg = msg
        #: Whether the request may succeed when sent again (used by the retry policy).
        self.retryable = retryable
        #: Seconds the service asked us to wait (``Retry-After``), if it said.
        self.retry_after = retry_after
        #: How many attempts were made before this error was raised (set by the hooks).
        self.attempts: int | None = None
        #: A job submission that failed this way may still have created a job (see docs/troubleshooting.md).
        self.outcome_unknown = False

    def __reduce__(self):  # keep keyword fields when pickled (e.g. across processes)
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))


def _rebuild(cls: type[KakaoPoseError], message: str, state: dict) -> KakaoPoseError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class KakaoPoseAuthError(KakaoPoseError):
    """The key was refused (HTTP 401 / code -401) or the app may not use the API (HTTP 403, codes -3, -5, -12)."""


class KakaoPoseQuotaError(KakaoPoseError):
    """Quota exhausted: code -10 or HTTP 429 after retries ran out, or code -11 (paid quota)."""


class KakaoPoseInputError(KakaoPoseError, ValueError):
    """An input broke a rule, found before sending (pre-flight) or by the service (code -2)."""


class KakaoPoseConnectionError(KakaoPoseError):
    """The service could not be reached or did not answer in time, after retries ran out.

    ``connected`` is ``False`` when the connection was never made (refused, DNS failure, connect timeout):
    nothing reached the service. ``True`` when it was (a read timeout, a dropped connection: the request may
    have arrived), ``None`` when not known. ``cause`` is the transport's own account of the failure, down to
    its root (e.g. ``NameResolutionError: Failed to resolve 'x': [Errno -2] Name or service not known``).
    """

    connected: bool | None = None  # class defaults: an error pickled before these fields existed has them too
    cause: str | None = None

    def __init__(
        self, message: str, *, connected: bool | None = None, cause: str | None = None, **kwargs: object
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.connected = connected
        self.cause = cause


class KakaoPoseServerError(KakaoPoseError):
    """The service failed (HTTP 5xx or code -1) after retries ran out."""


class KakaoPoseResponseError(KakaoPoseError):
    """The answer was not JSON, or not of the documented shape."""


class KakaoPoseJobFailedError(KakaoPoseError):
    """A video job ended with status ``failed``; the service's ``description`` is the message."""


class KakaoPoseJobNotFoundError(KakaoPoseError):
    """A video job id is unknown to the service, or older than its seven-day storage limit."""


__all__ = [
    "KakaoPoseAuthError",
    "KakaoPoseConnectionError",
    "KakaoPoseError",
    "KakaoPoseInputError",
    "KakaoPoseJobFailedError",
    "KakaoPoseJobNotFoundError",
    "KakaoPoseQuotaError",
    "KakaoPoseResponseError",
    "KakaoPoseServerError",
]

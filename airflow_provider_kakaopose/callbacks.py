"""Signed callback URLs for video jobs: what the service calls when a job ends, and how a call is checked.

The Pose API calls ``GET <callback_url>&job_id=<id>`` once when a job ends (never again, even if that call
fails). A callback is only ever a *hint* that the job may have ended: the receiver
(:mod:`airflow_provider_kakaopose.plugins.receiver`) records it in Redis and wakes the waiting trigger, which
then confirms with one status GET. Polling stays the source of truth.

The URL is ``<callback_base_url>/kakao-pose-callbacks/job-ended?token=<token>``. The token is
``v1.<kid>.<expires>.<nonce>.<signature>``: an HMAC-SHA256 (keyed by the deployment's ``callback_secret`` named
``kid``) over the rest. It does not name the job (the job id is only known after the submission): once the
service answered, the submitter *binds* the nonce to the job id in Redis (``nonce → job_id``, expiring with
the token), and a callback counts only when its ``job_id`` is the one bound to its nonce.

``callback_secret`` holds one or more ``kid:secret`` entries (comma- or whitespace-separated): the first signs,
every one verifies, so a secret is rotated by putting a new entry first and dropping the old one once every
token it signed has expired (the longest job deadline plus :data:`EXPIRY_MARGIN_S`).

Pure: only the standard library at import; Airflow's config is read by :func:`configured_callbacks` when called.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

log = logging.getLogger(__name__)

#: Where the receiver's FastAPI app is mounted in the api-server, and its one route.
MOUNT_PATH = "/kakao-pose-callbacks"
ROUTE = "/job-ended"
#: The Airflow config section and options.
SECTION = "kakao_pose"
OPT_BASE_URL, OPT_SECRET, OPT_POLL_INTERVAL = "callback_base_url", "callback_secret", "callback_poll_interval"
#: Seconds between the fallback polls of a wait that listens for callbacks.
DEFAULT_CALLBACK_POLL_INTERVAL = 300.0
#: A token stays valid this long after the job's deadline (a late callback still wakes a late wait).
EXPIRY_MARGIN_S = 3600.0
#: Shortest secret accepted (bytes): an HMAC key shorter than this is guessable.
MIN_SECRET_BYTES = 16
TOKEN_VERSION = "v1"
#: Redis: ``nonce → job_id`` (the binding), the "ended" marker of a job, and the wake-up channel.
NONCE_KEY = "kakaopose:cb:nonce:{}"
ENDED_KEY = "kakaopose:cb:ended:{}"
EARLY_KEY = "kakaopose:cb:early:{}"
#: ``job id → nonce``: whether a job carries the provider's callback (a sensor on that job may then listen).
JOB_KEY = "kakaopose:cb:job:{}"
CHANNEL = "kakaopose:cb:ended"
#: The "ended" marker lives at most this long (a wait that starts later polls anyway).
MARKER_TTL_S = 24 * 3600
#: A callback that came before its nonce was bound is kept this long, in case the binding follows.
EARLY_TTL_S = 600
#: Job ids as the service makes them (a UUID); anything else in ``job_id`` is refused before Redis is asked.
JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_KID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")


class InvalidToken(ValueError):
    """A callback token that is malformed, badly signed, signed by an unknown key, or expired (the message
    says which, and never holds the token or a secret)."""


@dataclass(frozen=True)
class Claims:
    """What a verified token says: the key that signed it, when it expires (epoch s), and its nonce."""

    kid: str
    expires: int
    nonce: str


@dataclass(frozen=True)
class CallbackSettings:
    """The deployment's callback settings (``[kakao_pose] callback_*``); the secrets are never in its repr."""

    base_url: str
    keys: tuple[tuple[str, bytes], ...] = field(repr=False)
    poll_interval: float = DEFAULT_CALLBACK_POLL_INTERVAL

    def url(self, token: str) -> str:
        """The callback URL for ``token`` (the service appends ``&job_id=<id>``)."""
        return f"{self.base_url.rstrip('/')}{MOUNT_PATH}{ROUTE}?token={quote(token, safe='')}"

    def url_problem(self) -> str | None:
        """Why the base URL is not what the service recommends (HTTPS on port 443), or ``None``."""
        parts = urlsplit(self.base_url)
        if parts.scheme != "https" or parts.port not in (None, 443):
            return f"callback_base_url {self.base_url!r} is not HTTPS on port 443, which the Pose API recommends"
        return None


def parse_keys(text: str) -> tuple[tuple[str, bytes], ...]:
    """``kid:secret`` entries (comma- or whitespace-separated) as ``((kid, secret), ...)``, the signing key first.

    :raises ValueError: an entry without a key id, a key id used twice, or a secret shorter than
        :data:`MIN_SECRET_BYTES` (the message names the key id, never the secret).
    """
    keys: list[tuple[str, bytes]] = []
    for entry in re.split(r"[\s,]+", text.strip()):
        if not entry:
            continue
        kid, sep, secret = entry.partition(":")
        if not sep or not _KID_RE.fullmatch(kid):
            raise ValueError("each callback_secret entry must be 'kid:secret' (kid: letters, digits, '-', '_')")
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"the callback secret of key {kid!r} is shorter than {MIN_SECRET_BYTES} bytes")
        if any(k == kid for k, _ in keys):
            raise ValueError(f"key id {kid!r} appears twice in callback_secret")
        keys.append((kid, secret.encode()))
    if not keys:
        raise ValueError("callback_secret holds no 'kid:secret' entry")
    return tuple(keys)


def _sign(secret: bytes, payload: str) -> str:
    digest = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_token(keys: tuple[tuple[str, bytes], ...], expires: float, nonce: str | None = None) -> tuple[str, str]:
    """A token signed with the first key, valid until ``expires`` (epoch s); returns ``(token, nonce)``."""
    kid, secret = keys[0]
    nonce = nonce or secrets.token_urlsafe(18)
    payload = f"{TOKEN_VERSION}.{kid}.{int(expires)}.{nonce}"
    return f"{payload}.{_sign(secret, payload)}", nonce


def verify_token(token: str, keys: tuple[tuple[str, bytes], ...], now: float | None = None) -> Claims:
    """The claims of a token signed by any of ``keys`` and not expired.

    :raises InvalidToken: malformed, unknown key id, bad signature, or expired.
    """
    parts = token.split(".") if isinstance(token, str) and len(token) <= 256 else []
    if len(parts) != 5 or parts[0] != TOKEN_VERSION:
        raise InvalidToken("malformed token")
    _, kid, expires_text, nonce, signature = parts
    if not (_KID_RE.fullmatch(kid) and expires_text.isdigit() and _NONCE_RE.fullmatch(nonce)):
        raise InvalidToken("malformed token")
    secret = dict(keys).get(kid)
    if secret is None:
        raise InvalidToken(f"token signed by an unknown key id {kid!r}")
    if not hmac.compare_digest(_sign(secret, ".".join(parts[:4])), signature):
        raise InvalidToken("bad signature")
    expires = int(expires_text)
    if expires < (time.time() if now is None else now):
        raise InvalidToken("token expired")
    return Claims(kid, expires, nonce)


# ------------------------------------------------------------------------------------------------ Redis scripts


def _mark_ended(ended_key: str, ttl: str) -> str:
    """Lua: write the job's "ended" marker unless it exists, and then (only then) publish the wake-up (the job id,
    ``ARGV[1]``) and return 1. The one rule both scripts follow, so a job is woken once whatever arrives twice."""
    return f"""if redis.call('SET', {ended_key}, '1', 'NX', 'EX', {ttl}) then
  redis.call('PUBLISH', '{CHANNEL}', ARGV[1])
  return 1
end"""


#: Bind a nonce to its job (KEYS: nonce key, early key, ended key, job key; ARGV: job id, ttl s, marker ttl s,
#: nonce); the job key records the nonce of the job's callback. If a
#: callback for this very job came before the binding (the early key names it), the job's marker is written
#: and the wake-up published now. Returns 1 when that happened, else 0.
BIND_SCRIPT = f"""
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[2])
local early = redis.call('GET', KEYS[2])
if early == ARGV[1] then
  redis.call('DEL', KEYS[2])
  {_mark_ended("KEYS[3]", "ARGV[3]")}
end
return 0
"""

#: Record a callback (KEYS: nonce key, ended key, early key; ARGV: job id, marker ttl s, early ttl s). Returns
#: 1 (new: marker written, wake-up published), 2 (a duplicate: nothing more), -1 (nonce bound to another job),
#: 0 (nonce not bound yet: kept as an early claim for EARLY_TTL_S, nothing woken).
RECORD_SCRIPT = f"""
local bound = redis.call('GET', KEYS[1])
if not bound then
  redis.call('SET', KEYS[3], ARGV[1], 'NX', 'EX', ARGV[3])
  return 0
end
if bound ~= ARGV[1] then return -1 end
{_mark_ended("KEYS[2]", "ARGV[2]")}
return 2
"""


def record_keys(nonce: str, job_id: str) -> list[str]:
    """The KEYS of :data:`RECORD_SCRIPT`."""
    return [NONCE_KEY.format(nonce), ENDED_KEY.format(job_id), EARLY_KEY.format(nonce)]


def bind_nonce(store_url: str, nonce: str, job_id: str, expires: float) -> bool:
    """Bind ``nonce`` to ``job_id`` in the store until ``expires`` (sync: the submitting worker calls it).
    Returns whether a callback that came before the binding was recorded by it. Raises on a Redis error."""
    client = _sync_client(store_url)
    ttl = max(int(expires - time.time()), 60)
    return bool(
        client.eval(BIND_SCRIPT, 4, *bind_keys(nonce, job_id), job_id, str(ttl), str(min(ttl, MARKER_TTL_S)), nonce)
    )


def bind_keys(nonce: str, job_id: str) -> list[str]:
    """The KEYS of :data:`BIND_SCRIPT`."""
    return [NONCE_KEY.format(nonce), EARLY_KEY.format(nonce), ENDED_KEY.format(job_id), JOB_KEY.format(job_id)]


def callback_nonce_of(store_url: str, job_id: str) -> str | None:
    """The nonce of the provider's callback for ``job_id``, or ``None`` when the job carries none (sync: a
    sensor's worker asks it before deferring). Raises on a Redis error."""
    value = _sync_client(store_url).get(JOB_KEY.format(job_id))
    return value.decode() if isinstance(value, bytes) else value


_SYNC_CLIENTS: dict[str, Any] = {}


def _sync_client(store_url: str) -> Any:
    """One thread-safe client (with its connection pool) per store URL and process."""
    client = _SYNC_CLIENTS.get(store_url)
    if client is None:
        import redis

        client = _SYNC_CLIENTS.setdefault(
            store_url, redis.Redis.from_url(store_url, socket_connect_timeout=2, socket_timeout=2)
        )
    return client


# ------------------------------------------------------------------------------------------------- configuration


def _conf_get(conf: Any, option: str) -> str:
    value = conf.get(SECTION, option, fallback="")
    return value.strip() if isinstance(value, str) else ""


def configured_callbacks() -> CallbackSettings | None:
    """The deployment's callback settings, or ``None`` when ``callback_base_url`` or ``callback_secret`` is
    unset, unreadable or unusable (then waits poll; a WARNING says why, once per process).

    ``callback_secret`` is read as Airflow reads a sensitive option: the environment
    (``AIRFLOW__KAKAO_POSE__CALLBACK_SECRET``), ``..._CMD``, ``..._SECRET`` or ``airflow.cfg``.
    """
    try:
        from airflow_provider_kakaopose._compat import conf
        from airflow_provider_kakaopose.hooks._shared_quota import _make_option_known

        _make_option_known(conf)
        base_url = _conf_get(conf, OPT_BASE_URL)
        secret_text = _conf_get(conf, OPT_SECRET) if base_url else ""
        poll_text = _conf_get(conf, OPT_POLL_INTERVAL)
    except ImportError:
        return None
    except Exception as err:  # e.g. a _CMD that fails: its message may hold the secret, so only its type
        _warn_once("unreadable", "[kakao_pose] callback settings unreadable (%s): waits poll", type(err).__name__)
        return None
    if not base_url or not secret_text:
        return None
    try:
        keys = parse_keys(secret_text)
        _mask(secret_text, keys)
        poll = float(poll_text) if poll_text else DEFAULT_CALLBACK_POLL_INTERVAL
        if not poll > 0:
            raise ValueError(f"callback_poll_interval must be positive, not {poll_text!r}")
        if urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).hostname:
            raise ValueError(f"callback_base_url {base_url!r} is not an http(s) URL")
    except ValueError as err:
        _warn_once("unusable", "[kakao_pose] callback settings are unusable (%s): waits poll", err)
        return None
    return CallbackSettings(base_url.rstrip("/"), keys, poll)


def configured_poll_interval() -> float:
    """``[kakao_pose] callback_poll_interval`` (default 300; also when unusable). Reads no secret (so no
    ``_CMD`` runs): cheap enough for a trigger's event loop."""
    try:
        from airflow_provider_kakaopose._compat import conf

        value = float(_conf_get(conf, OPT_POLL_INTERVAL) or DEFAULT_CALLBACK_POLL_INTERVAL)
    except Exception:
        return DEFAULT_CALLBACK_POLL_INTERVAL
    return value if value > 0 else DEFAULT_CALLBACK_POLL_INTERVAL


def _mask(secret_text: str, keys: tuple[tuple[str, bytes], ...]) -> None:
    """Register the whole option and each secret with Airflow's secrets masker."""
    try:
        from airflow_provider_kakaopose._compat import mask_secret

        mask_secret(secret_text)
        for _, secret in keys:
            mask_secret(secret.decode())
    except Exception as err:  # outside Airflow's logging
        log.debug("Could not register the callback secret with the secrets masker: %s", type(err).__name__)


_WARNED: set[str] = set()


def _warn_once(kind: str, message: str, *args: Any) -> None:
    if kind not in _WARNED:
        _WARNED.add(kind)
        log.warning(message, *args)

"""One Redis subscription per triggerer event loop, shared by every trigger that waits for a job's callback.

The receiver (:mod:`airflow_provider_kakaopose.plugins.receiver`) writes a job's "ended" marker and publishes
its id on :data:`~airflow_provider_kakaopose.callbacks.CHANNEL`. A :class:`CallbackListener` (one per event loop
and store, from :func:`listener_for`) holds the one subscription and a map ``job id → events`` of the triggers
waiting; a message sets the events of its job. What is not lost:

- a callback that came while no triggerer ran: :meth:`CallbackListener.watch` reads the job's marker *after*
  registering and subscribing, so a marker written before (or while) the trigger started is seen;
- a callback that came while the subscription was down (Redis restarted, a network cut): after each
  re-subscription the markers of every waiting job are read again (one ``MGET``);
- the binding ``nonce → job id`` that makes a callback count: a trigger that knows its job's nonce binds it
  again when it starts and after each re-subscription, so a Redis restarted without persistence (which lost
  the bindings) still accepts the callbacks that come after it is back (a callback that came before the
  binding is back was kept as an early claim, and counts then).

A callback that came while Redis was down (the receiver answered 503), or a marker lost with Redis itself,
is not seen: the wait's fallback poll finds the job's end. Each listener keeps a task and one connection while
at least one trigger waits, and stops when the last one leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from typing import Any

from airflow_provider_kakaopose.callbacks import BIND_SCRIPT, CHANNEL, ENDED_KEY, MARKER_TTL_S, bind_keys

log = logging.getLogger(__name__)

#: Seconds a new watcher waits for the subscription before reading its marker anyway.
SUBSCRIBE_WAIT_S = 5.0
#: Seconds between attempts to subscribe again after the store was lost (doubling up to the last).
RECONNECT_S = (0.5, 1.0, 2.0, 5.0)
#: The subscription's idle read: this often the connection is checked (a PING) while no message comes.
READ_TIMEOUT_S = 10.0


class CallbackListener:
    """The shared subscription of one event loop to one store; see the module's docstring."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.waiters: dict[str, set[asyncio.Event]] = {}
        #: ``job id → (nonce, expires)`` of the waiting jobs that carry the provider's callback.
        self.bindings: dict[str, tuple[str, float]] = {}
        self.subscribed = asyncio.Event()
        #: How many times this listener subscribed (1 + re-subscriptions after an outage): for tests.
        self.subscriptions = 0
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._lost_logged = False

    def _commands(self) -> Any:
        """A small pool for marker reads (never one connection per trigger)."""
        if self._client is None:
            import redis.asyncio

            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self.url, max_connections=4, timeout=5, socket_connect_timeout=1, socket_timeout=2
            )
            self._client = redis.asyncio.Redis(connection_pool=pool)
        return self._client

    async def watch(self, job_id: str, nonce: str | None = None, expires: float | None = None) -> asyncio.Event:
        """Register a waiter for ``job_id``; the event is set at once when the job's marker already exists,
        else when its callback comes. With the job's callback ``nonce``, its binding is (re)written until
        ``expires`` (epoch s). :meth:`unwatch` when done."""
        event = asyncio.Event()
        self.waiters.setdefault(job_id, set()).add(event)
        if nonce:
            self.bindings[job_id] = (nonce, expires if expires is not None else time.time() + MARKER_TTL_S)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="kakao-pose-callback-listener")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.subscribed.wait(), SUBSCRIBE_WAIT_S)
        if job_id in self.bindings:
            with contextlib.suppress(Exception):  # Redis down: bound again once the subscription is back
                await self._bind(job_id)
        if await self._marker(job_id):
            event.set()
        return event

    async def _bind(self, job_id: str) -> None:
        """Write the job's binding (and turn an early claim for it into its marker: see BIND_SCRIPT)."""
        nonce, expires = self.bindings[job_id]
        ttl = int(expires - time.time())
        if ttl > 0:
            keys = bind_keys(nonce, job_id)
            await self._commands().eval(BIND_SCRIPT, 4, *keys, job_id, ttl, min(ttl, MARKER_TTL_S), nonce)

    def unwatch(self, job_id: str, event: asyncio.Event) -> None:
        """Drop a waiter; the last one stops the subscription."""
        events = self.waiters.get(job_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self.waiters[job_id]
                self.bindings.pop(job_id, None)
        if not self.waiters and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _marker(self, job_id: str) -> bool:
        try:
            return bool(await self._commands().exists(ENDED_KEY.format(job_id)))
        except Exception as err:  # the fallback poll covers it
            log.debug("Could not read the callback marker of job %s: %s", job_id, type(err).__name__)
            return False

    def _wake(self, job_id: str) -> None:
        for event in self.waiters.get(job_id, ()):
            event.set()

    async def _recheck(self) -> None:
        """Wake every waiting job whose marker exists (callbacks that came while not subscribed)."""
        jobs = list(self.waiters)
        for start in range(0, len(jobs), 500):
            chunk = jobs[start : start + 500]
            values = await self._commands().mget([ENDED_KEY.format(j) for j in chunk])
            for job_id, value in zip(chunk, values, strict=True):
                if value is not None:
                    self._wake(job_id)

    async def _run(self) -> None:
        """Subscribe, then hand each message to its waiters; subscribe again after any loss."""
        import redis.asyncio

        attempt = 0
        while True:
            client = redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=1, health_check_interval=30)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self.subscriptions += 1
                self.subscribed.set()
                if self._lost_logged:
                    log.info("Kakao Pose callback subscription restored")
                    self._lost_logged = False
                attempt = 0
                for job_id in list(self.bindings):
                    await self._bind(job_id)
                await self._recheck()
                while True:
                    message = await pubsub.get_message(timeout=READ_TIMEOUT_S)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        self._wake(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self.subscribed.clear()
                if not self._lost_logged:
                    log.warning(
                        "Kakao Pose callback subscription lost (%s); waits rely on their fallback polls until it "
                        "is back",
                        type(err).__name__,
                    )
                    self._lost_logged = True
                await asyncio.sleep(RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)])
                attempt += 1
            finally:
                self.subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()


_LISTENERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, CallbackListener]] = (
    weakref.WeakKeyDictionary()
)


def listener_for(url: str) -> CallbackListener:
    """The running event loop's listener on ``url`` (made on first use)."""
    listeners = _LISTENERS.setdefault(asyncio.get_running_loop(), {})
    listener = listeners.get(url)
    if listener is None:
        listener = listeners[url] = CallbackListener(url)
    return listener

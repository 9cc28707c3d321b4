"""The provider's own signed callback for a video submission: made when the deployment receives callbacks
(docs/callbacks.md), its nonce bound to the job once it is submitted.

Imported when a DAG file is parsed: the callbacks module and the store are imported when a callback is made.
"""

from __future__ import annotations

import time
from typing import Any


class OurCallback:
    """The provider's signed callback URL for one submission, and its nonce to bind to the job id."""

    def __init__(self, url: str, nonce: str, expires: float, store: str) -> None:
        self.url, self.nonce, self.expires, self.store = url, nonce, expires, store

    def __repr__(self) -> str:  # the URL holds the token: never shown
        return "OurCallback(...)"

    @classmethod
    def make(cls, timeout: float, log: Any) -> OurCallback | None:
        """A new signed URL when the deployment receives callbacks, else ``None``."""
        from airflow_provider_kakaopose import callbacks
        from airflow_provider_kakaopose._compat import AIRFLOW_V_3_0_PLUS
        from airflow_provider_kakaopose.hooks._shared_quota import configured_store

        settings = callbacks.configured_callbacks()
        if settings is None:
            return None
        if not AIRFLOW_V_3_0_PLUS:
            log.info("Kakao Pose callbacks need Airflow 3 (the receiver is a FastAPI plugin): on Airflow 2 waits poll")
            return None
        store = configured_store()
        if store is None:
            log.warning("[kakao_pose] callback_base_url is set but rate_limit_store is not: the wait polls")
            return None
        if problem := settings.url_problem():
            log.warning("%s: the service may not call it back", problem)
        expires = time.time() + timeout + callbacks.EXPIRY_MARGIN_S
        token, nonce = callbacks.make_token(settings.keys, expires)
        return cls(settings.url(token), nonce, expires, store)

    def bind(self, job_id: str, log: Any) -> bool:
        """Bind the nonce to the submitted job; False (the wait polls) when the store cannot be reached."""
        from airflow_provider_kakaopose import callbacks

        try:
            callbacks.bind_nonce(self.store, self.nonce, job_id, self.expires)
        except Exception as err:
            log.warning("Could not register the callback of job %s (%s): the wait polls", job_id, type(err).__name__)
            return False
        log.info("Job %s will call back when it ends; the wait listens for it", job_id)
        return True

"""The Airflow plugin that mounts the callback receiver in the api-server (Airflow 3; 2.x: waits poll).

Registered twice, as official providers do: the ``airflow.plugins`` entry point (what Airflow loads by
default) and ``plugins`` in :func:`~airflow_provider_kakaopose.get_provider_info.get_provider_info` (used when
``[core] lazy_discover_providers`` is off).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow_provider_kakaopose._compat import AIRFLOW_V_3_0_PLUS, AirflowPlugin
from airflow_provider_kakaopose.callbacks import MOUNT_PATH

log = logging.getLogger(__name__)


def _fastapi_apps() -> list[dict[str, Any]]:
    if not AIRFLOW_V_3_0_PLUS:
        return []
    try:
        from airflow_provider_kakaopose.plugins.receiver import create_app

        return [{"app": create_app(), "url_prefix": MOUNT_PATH, "name": "Kakao Pose callbacks"}]
    except ImportError as err:  # fastapi missing: not an api-server
        log.debug("Kakao Pose callback receiver not mounted: %s", err)
        return []


class KakaoPoseCallbackPlugin(AirflowPlugin):
    """Mounts the receiver of the Pose API's job callbacks at ``/kakao-pose-callbacks`` (Airflow 3 only: on
    Airflow 2 the provider never asks for callbacks and every wait polls)."""

    name = "kakao_pose_callbacks"
    fastapi_apps = _fastapi_apps()

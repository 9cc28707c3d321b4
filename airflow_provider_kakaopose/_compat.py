"""Every Airflow name the provider uses whose home differs between Airflow 2.11 and 3.x, in one place.

The names come from ``apache-airflow-providers-common-compat`` (what the official providers use), which maps
each to where the running Airflow keeps it (``airflow.sdk`` on 3.x, ``airflow.models`` & co. on 2.x; ``Asset``
is ``Dataset`` on 2.x). What it does not cover is here too, each with the versions it depends on:

- ``HAS_TASK_STATE_STORE``: ``context["task_state_store"]`` exists from Airflow 3.3; below, the video
  operator keeps its job record elsewhere (see :class:`~airflow_provider_kakaopose.operators.pose.JobRecordStore`).
- ``LINKS_PUSHED_AS_XCOM``: Airflow 3 computes operator extra links in the worker when a try ends and stores
  them as XCom; Airflow 2's webserver calls ``get_link`` itself.
- ``get_async_connection`` / ``get_async_extra_dejson``: the connection looked up without blocking an event
  loop on every version (Airflow < 3.1 has no async connection API; < 3.3.2 masks secrets synchronously).

Nothing else in the provider imports ``airflow.sdk``, ``airflow.models`` or ``airflow.exceptions`` directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.version_compat import (
    AIRFLOW_V_3_0_PLUS,
    AIRFLOW_V_3_1_PLUS,
    AIRFLOW_V_3_2_PLUS,
    AIRFLOW_V_3_3_PLUS,
)

#: ``context["task_state_store"]`` (kept across the tries of a task instance) came with Airflow 3.3.
HAS_TASK_STATE_STORE = AIRFLOW_V_3_3_PLUS
#: Airflow 3 pushes each extra link as an XCom when a try ends; Airflow 2's webserver asks ``get_link``.
LINKS_PUSHED_AS_XCOM = AIRFLOW_V_3_0_PLUS
#: Airflow 3.2+ builds the connection form from provider info's ``conn-fields``; earlier versions call the
#: hook class's own ``get_connection_form_widgets`` / ``get_ui_field_behaviour``.
FORM_FROM_CONN_FIELDS = AIRFLOW_V_3_2_PLUS


#: Names taken from common-compat's ``sdk`` module on first use (so importing a hook does not import, say,
#: the DAG class): ``from airflow_provider_kakaopose._compat import BaseOperator`` works as usual.
_FROM_COMPAT_SDK = frozenset(
    {
        "DAG",
        "AirflowException",
        "AirflowRescheduleException",
        "AirflowSensorTimeout",
        "AirflowSkipException",
        "Asset",
        "BaseHook",
        "BaseOperator",
        "BaseOperatorLink",
        "BaseSensorOperator",
        "Context",
        "ObjectStoragePath",
        "TaskDeferred",
        "Variable",
        "XCom",
        "conf",
        "mask_secret",
        "task",
    }
)

if TYPE_CHECKING:
    from airflow.exceptions import AirflowRescheduleException
    from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
    from airflow.providers.common.compat.sdk import (
        DAG,
        AirflowException,
        AirflowSensorTimeout,
        AirflowSkipException,
        Asset,
        BaseHook,
        BaseOperator,
        BaseOperatorLink,
        BaseSensorOperator,
        Context,
        ObjectStoragePath,
        TaskDeferred,
        Variable,
        XCom,
        conf,
        mask_secret,
        task,
    )


def __getattr__(name: str) -> Any:
    if name in _FROM_COMPAT_SDK:
        if name == "AirflowRescheduleException":  # not in common-compat: the same class on every version
            from airflow.exceptions import AirflowRescheduleException as value
        else:
            from airflow.providers.common.compat import sdk

            value = getattr(sdk, name)
        globals()[name] = value
        return value
    if name in ("get_async_connection", "get_async_extra_dejson"):
        from airflow.providers.common.compat import connection

        value = getattr(connection, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def airflow_version() -> str:
    """The running Airflow's version string."""
    from airflow import __version__

    return __version__


__all__ = [
    "AIRFLOW_V_3_0_PLUS",
    "AIRFLOW_V_3_1_PLUS",
    "AIRFLOW_V_3_2_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "DAG",
    "FORM_FROM_CONN_FIELDS",
    "HAS_TASK_STATE_STORE",
    "LINKS_PUSHED_AS_XCOM",
    "AirflowException",
    "AirflowRescheduleException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "Asset",
    "BaseHook",
    "BaseOperator",
    "BaseOperatorLink",
    "BaseSensorOperator",
    "Context",
    "ObjectStoragePath",
    "TaskDeferred",
    "Variable",
    "XCom",
    "airflow_version",
    "conf",
    "get_async_connection",
    "get_async_extra_dejson",
    "mask_secret",
    "task",
]

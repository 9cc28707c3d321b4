"""The one place the provider takes Airflow's classes and helpers from, on Airflow 2.11 and 3.x alike.

Provider code imports them from here (``from airflow_provider_kakaopose._compat import BaseOperator``), never
from ``airflow.sdk``, ``airflow.models`` or ``airflow.exceptions`` directly, because their homes differ between
versions: when Airflow moves a name again, this module is all that changes.

- Most come from ``apache-airflow-providers-common-compat`` (what the official providers use), which finds each
  where the running Airflow keeps it (``airflow.sdk`` on 3.x, ``airflow.models`` & co. on 2.x; ``Asset`` is
  ``Dataset`` on 2.x).
- ``get_async_connection`` / ``get_async_extra_dejson`` (common-compat's too) look a connection up without
  blocking an event loop on every version (Airflow < 3.1 has no async connection API; < 3.3.2 masks secrets
  synchronously).
- ``AirflowRescheduleException`` is not in common-compat; it is the same class on every version.

Each is imported on first use, so importing a hook does not import, say, the DAG class. ``__all__`` is the one
list of names (the ``TYPE_CHECKING`` imports name the same for type checkers; a test checks they agree).

The version flags (``AIRFLOW_V_3_0_PLUS`` ...) and ``HAS_TASK_STATE_STORE`` are re-exported for the tests, which
read Airflow's internals differently per version; the provider's own code reads none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.version_compat import (
    AIRFLOW_V_3_0_PLUS,
    AIRFLOW_V_3_1_PLUS,
    AIRFLOW_V_3_2_PLUS,
    AIRFLOW_V_3_3_PLUS,
)

#: ``context["task_state_store"]`` (kept across the tries of a task instance) came with Airflow 3.3.
HAS_TASK_STATE_STORE = AIRFLOW_V_3_3_PLUS

#: The one list of names: the flags above, and the Airflow names imported on first use by ``__getattr__``.
__all__ = [
    "AIRFLOW_V_3_0_PLUS",
    "AIRFLOW_V_3_1_PLUS",
    "AIRFLOW_V_3_2_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "DAG",
    "HAS_TASK_STATE_STORE",
    "AirflowException",
    "AirflowPlugin",
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
    "get_async_connection",
    "get_async_extra_dejson",
    "mask_secret",
    "task",
]

_SDK = "airflow.providers.common.compat.sdk"
_CONNECTION = "airflow.providers.common.compat.connection"
#: Where a lazily imported name comes from when that is not common-compat's ``sdk`` module.
_HOMES = {
    "AirflowRescheduleException": "airflow.exceptions",  # not in common-compat: the same class on every version
    "get_async_connection": _CONNECTION,
    "get_async_extra_dejson": _CONNECTION,
}

if TYPE_CHECKING:  # the lazily imported names of __all__, for type checkers and IDEs
    from airflow.exceptions import AirflowRescheduleException
    from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
    from airflow.providers.common.compat.sdk import (
        DAG,
        AirflowException,
        AirflowPlugin,
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
    """Import a name of ``__all__`` on first use (then it is a plain module attribute)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES.get(name, _SDK)), name)
    globals()[name] = value
    return value

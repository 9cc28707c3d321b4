"""Provider metadata read by Airflow's ProvidersManager through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_kakaopose import __version__

CONN_TYPE = "kakao_pose"
DEFAULT_CONN_ID = "kakao_pose_default"
DEFAULT_BASE_URL = "https://cv-api.kakaobrain.com"


def _field(label: str, description: str, kind: str, default: Any, minimum: float | None = 0) -> dict[str, Any]:
    """One extra field of the connection form: its label, help text and JSON schema (empty allowed)."""
    schema: dict[str, Any] = {"type": [kind, "null"], "default": default}
    if minimum is not None:
        schema["minimum"] = minimum
    return {"label": label, "description": description, "schema": schema}


#: Extra fields of the ``kakao_pose`` connection, with their defaults. Shared by the UI form and the hook.
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "connect_timeout": _field(
        "Connect timeout (s)", "Seconds to wait for the TCP/TLS connection (the service asks for 5).", "number", 5
    ),
    "read_timeout": _field(
        "Read timeout (s)", "Seconds to wait for the answer (the service asks for 15).", "number", 15
    ),
    "max_retries": _field(
        "Max retries",
        "Retries after the first attempt for connection errors, timeouts, 429, 5xx, codes -1/-10.",
        "integer",
        5,
    ),
    "retry_wait_initial": _field(
        "First retry wait (s)", "Initial exponential backoff (doubles per retry, with jitter).", "number", 1.0
    ),
    "retry_wait_max": _field(
        "Longest retry wait (s)", "Cap for one backoff wait, Retry-After included.", "number", 30.0
    ),
    "rate_limit_per_second": _field(
        "Rate limit (requests/s)", "Client-side limit shared by all calls of one hook; empty for none.", "number", None
    ),
    "validate_inputs": _field(
        "Validate inputs before sending",
        "Check format, size, sides and aspect ratio locally before spending quota.",
        "boolean",
        True,
        minimum=None,
    ),
}


#: How the standard connection form is relabelled (provider-info spelling; the hook's method uses underscores).
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "login", "port", "extra"],
    "relabeling": {"password": "REST API key", "host": "API base URL"},
    "placeholders": {"host": DEFAULT_BASE_URL, "password": "REST API key from Kakao Developers"},
}


INTEGRATION = "Kakao Brain Pose"
#: The modules that hold each kind of component.
MODULES = {
    "operators": "airflow_provider_kakaopose.operators.pose",
    "sensors": "airflow_provider_kakaopose.sensors.pose",
    "hooks": "airflow_provider_kakaopose.hooks.pose",
    "triggers": "airflow_provider_kakaopose.triggers.pose",
}

#: The ``[kakao_pose]`` options a deployment can set (Airflow lists them in ``airflow config list``).
CONFIG: dict[str, Any] = {
    "kakao_pose": {
        "description": "Settings of the Kakao Brain Pose provider for the whole deployment.\n",
        "options": {
            "rate_limit_store": {
                "description": (
                    "Redis URL of the store that makes each connection's rate_limit_per_second hold for "
                    "the sum of all processes (every worker thread, every triggerer) instead of per "
                    "process. Set it on every component (e.g. AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE). "
                    "Needs airflow-provider-kakaopose[redis]. Empty: each process paces itself alone. "
                    "If the store is unreachable or the URL unusable, processes pace themselves alone "
                    "and log one warning. Sensitive (it may hold a password): it may also come from "
                    "AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE_CMD or _SECRET.\n"
                ),
                "version_added": "0.2.0",
                "type": "string",
                # It may hold a password: masked, and _CMD / _SECRET work for it as for Celery's broker URL.
                "sensitive": True,
                "example": "redis://127.0.0.1:6379/1",
                "default": "",
            },
            "callback_base_url": {
                "description": (
                    "Public base URL of the api-server (as the Pose API reaches it, e.g. through an "
                    "ingress that forwards only /kakao-pose-callbacks/): with callback_secret and "
                    "rate_limit_store set, deferrable video waits ask the service for a callback and "
                    "listen for it instead of polling (docs/callbacks.md). HTTPS on port 443 is what the "
                    "service recommends. Empty: waits poll.\n"
                ),
                "version_added": "0.4.0",
                "type": "string",
                "example": "https://airflow.example.com",
                "default": "",
            },
            "callback_secret": {
                "description": (
                    "Keys that sign and verify callback URLs: one or more 'kid:secret' entries "
                    "(comma-separated, secrets of at least 16 bytes); the first signs, all verify (to "
                    "rotate, put a new entry first, drop the old one after the longest job deadline plus "
                    "an hour). The same value on every component. Sensitive: it may also come from "
                    "AIRFLOW__KAKAO_POSE__CALLBACK_SECRET_CMD or _SECRET.\n"
                ),
                "version_added": "0.4.0",
                "type": "string",
                "sensitive": True,
                "example": "k2:3f9c...,k1:a81d...",
                "default": "",
            },
            "callback_poll_interval": {
                "description": (
                    "Seconds between the fallback status checks of a wait that listens for a callback "
                    "(a callback the service lost costs at most this much delay).\n"
                ),
                "version_added": "0.4.0",
                "type": "float",
                "example": "300",
                "default": "300",
            },
        },
    }
}


def get_provider_info() -> dict[str, Any]:
    """Return the provider description Airflow uses to register connection types, hooks and operators."""
    return {
        "package-name": "airflow-provider-kakaopose",
        "name": "Kakao Brain Pose",
        "description": "Human-pose estimation with the Kakao Brain Pose API, landed as Parquet tables.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://developers.kakao.com/docs/latest/en/pose/dev-guide",
                "tags": ["service"],
            }
        ],
        **{kind: [{"integration-name": INTEGRATION, "python-modules": [module]}] for kind, module in MODULES.items()},
        "plugins": [
            {
                "name": "kakao_pose_callbacks",
                "plugin-class": "airflow_provider_kakaopose.plugins.plugin.KakaoPoseCallbackPlugin",
            }
        ],
        "config": CONFIG,
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": "airflow_provider_kakaopose.hooks.pose.KakaoPoseHook",
                "hook-name": "Kakao Brain Pose",
                "conn-fields": CONN_FIELDS,
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
            }
        ],
    }

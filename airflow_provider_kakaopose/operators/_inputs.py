"""What the operators and the sensor make of their arguments: inputs to send, outputs to write, defaults.

Imported when a DAG file is parsed: nothing heavy at module level.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from airflow_provider_kakaopose._compat import conf
from airflow_provider_kakaopose.exceptions import KakaoPoseInputError

if TYPE_CHECKING:
    from airflow_provider_kakaopose._compat import BaseOperator

#: How to hand a list to ``images`` without rendering it to text first (named by the log line and the error).
LIST_FIXES = (
    "set render_template_as_native_obj=True on the DAG, or pass the upstream task's output itself "
    '(images=read_urls.output, or images=read_urls() in TaskFlow) instead of a "{{ ti.xcom_pull(...) }}" string'
)


def default_deferrable() -> bool:
    """``deferrable``'s default for the video operator and the sensor: ``[operators] default_deferrable``."""
    return conf.getboolean("operators", "default_deferrable", fallback=False)


def output_uri_of(output: Any) -> str | None:
    """The URI of an ``output_uri`` given as a string, a path or an Airflow ``Asset``."""
    if output is None:
        return None
    uri = getattr(output, "uri", None)
    return str(uri if uri is not None else output)


def add_asset_outlet(op: BaseOperator, output: Any) -> None:
    """An ``Asset`` given as output is also declared as the task's outlet (downstream DAGs can use it)."""
    from airflow_provider_kakaopose._compat import Asset  # Dataset on Airflow 2

    if isinstance(output, Asset) and output not in op.outlets:
        op.outlets = [*op.outlets, output]


def check_pictures_dependency(pictures: bool) -> None:
    """``pictures=True`` needs Pillow (the ``pictures`` extra): checked before anything is sent, so a missing
    library costs no request."""
    if pictures:
        from airflow_provider_kakaopose.render import require_pillow

        try:
            require_pillow()
        except ImportError as err:
            raise KakaoPoseInputError(f"pictures=True: {err}") from None


def is_url(item: Any) -> bool:
    return isinstance(item, str) and item.lower().startswith(("http://", "https://"))


def open_input(item: Any) -> tuple[str, dict[str, Any]]:
    """``(source label, hook kwargs)`` for one image or video: http(s) URLs are sent as URLs, anything else
    (local path, ``file://``, ``s3://conn@bucket/key``, an ``ObjectStoragePath``) is read and uploaded."""
    if is_url(item):
        return item, {"url": item}
    if isinstance(item, str) and "://" in item:
        from airflow_provider_kakaopose._compat import ObjectStoragePath

        try:
            return item, {"file": ObjectStoragePath(item)}
        except Exception as err:  # e.g. no filesystem for the scheme (the error class varies by version)
            raise KakaoPoseInputError(f"Cannot read input {item!r}: {err}") from None
    if isinstance(item, str | os.PathLike) or hasattr(item, "read_bytes"):
        return str(item), {"file": item}
    raise KakaoPoseInputError(f"Cannot read input {item!r}: give an http(s) URL, a path or a storage URI")


def parse_rendered_list(text: str) -> list[str]:
    """The list a Jinja template rendered to text — ``"['a.jpg', 'b.jpg']"`` (Python) or ``'["a.jpg"]'``
    (JSON) — as a list of strings; :class:`KakaoPoseInputError` naming the fixes when it is not one.

    JSON is tried first: where both read a text of strings they agree, except on JSON's escapes (``\\/``),
    which Python keeps as a backslash; a Python list's text (single quotes) is no JSON and is read as a
    literal (``ast.literal_eval``: literals only, nothing is run)."""
    import ast
    import warnings

    try:
        value = json.loads(text)
    except ValueError:
        try:
            with warnings.catch_warnings():  # "invalid escape sequence" in a Windows path's text
                warnings.simplefilter("ignore")
                value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
            raise KakaoPoseInputError(
                f"images is a string that starts with '[' but is not a list of URLs or paths ({err}): "
                f"{text[:200]!r}. A list from an upstream task was probably rendered to text by a template: "
                f"{LIST_FIXES}"
            ) from None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise KakaoPoseInputError(
            f"images is a string that starts with '[' but is not a list of URLs or paths: {text[:200]!r}. "
            f"Give a list of strings; for a list from an upstream task, {LIST_FIXES}"
        )
    return list(value)

"""Fixtures of the tables tests."""

from __future__ import annotations

import pytest

from airflow_provider_kakaopose.tables import flatten


@pytest.fixture
def fast_only(monkeypatch):
    """Fail if the raw-bytes path falls back to json + Python loop."""

    def no_slow(*a, **k):
        raise AssertionError("fell back to the slow path")

    monkeypatch.setattr(flatten, "json_fallback", no_slow)

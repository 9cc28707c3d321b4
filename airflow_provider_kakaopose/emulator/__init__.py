"""A local emulator of the Kakao Brain Pose API: a real HTTP server on loopback, no key and no network needed.

>>> from airflow_provider_kakaopose.emulator import PoseEmulator
>>> with PoseEmulator(api_key="k", seed=1) as emu:  # doctest: +SKIP
...     emu.base_url

Importing it never imports Airflow, pyarrow or pandas. See ``docs/emulator.md``.
"""

from airflow_provider_kakaopose.emulator.server import (
    QUOTA_MODES,
    RANDOM_FAULT_KINDS,
    SCRIPT_FAULT_KINDS,
    EmulatorConfig,
    PoseEmulator,
    RecordedRequest,
)

__all__ = [
    "QUOTA_MODES",
    "RANDOM_FAULT_KINDS",
    "SCRIPT_FAULT_KINDS",
    "EmulatorConfig",
    "PoseEmulator",
    "RecordedRequest",
]

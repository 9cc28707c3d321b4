"""Every code block in README.md and docs/*.md runs, against the emulator, so the docs cannot rot.

- ```python blocks of one page run in order in one namespace (like a notebook), in a fresh subprocess whose
  ``kakao_pose_default`` connection points at an emulator; top-level ``await`` is allowed.
- ```bash blocks run with ``bash -euo pipefail`` in the same environment.
- A block may be skipped only with an HTML comment right above it, ``<!-- docs-test: skip: <reason> -->``
  (e.g. a command that starts a server forever, or ``make test`` itself); the reason is required.
- Other fences (text, console output, SQL shown for reading) are not code to run; SQL recipes are run from
  python blocks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import API_KEY, ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(
    r"(?P<skip><!-- docs-test: skip: (?P<reason>[^>]+?) -->\s*\n)?^```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^```",
    re.S | re.M,
)
RUNNABLE = {"python", "bash", "sh", "shell"}

RUNNER = textwrap.dedent(
    """
    import ast, asyncio, json, sys, types
    blocks = json.load(open(sys.argv[1]))
    namespace = {"__name__": "__docs__"}
    for n, (line, code) in enumerate(blocks):
        compiled = compile(code, f"{sys.argv[2]}:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(compiled, namespace)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    """
)


def blocks_of(page: Path) -> list[tuple[str, int, str, str | None]]:
    """``(lang, line, code, skip reason)`` for every fenced block of a page."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start("code")) + 1
        found.append((match["lang"], line, match["code"], match["reason"]))
    return found


@pytest.fixture(scope="module")
def docs_env(tmp_path_factory):
    from airflow_provider_kakaopose.emulator import PoseEmulator

    with PoseEmulator(api_key=API_KEY, seed=3, job_waiting_s=0.2, job_processing_s=0.5) as emu:
        env = dict(os.environ)
        env["AIRFLOW_CONN_KAKAO_POSE_DEFAULT"] = json.dumps(
            {
                "conn_type": "kakao_pose",
                "host": emu.base_url,
                "password": API_KEY,
                "extra": {"retry_wait_initial": 0.05, "retry_wait_max": 0.2},
            }
        )
        env["KAKAO_POSE_EMULATOR_URL"] = emu.base_url
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        yield env, tmp_path_factory


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_code_blocks_run(page, docs_env):
    env, factory = docs_env
    workdir = factory.mktemp(page.stem)
    python, skipped = [], []
    for lang, line, code, reason in blocks_of(page):
        if lang not in RUNNABLE:
            continue
        if reason:
            skipped.append((line, reason))
            continue
        if lang == "python":
            python.append((line, code))
        else:
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", code],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert result.returncode == 0, (
                f"{page.name}:{line} failed:\n{result.stdout[-1500:]}\n{result.stderr[-3000:]}"
            )
    if python:
        (workdir / "blocks.json").write_text(json.dumps(python))
        result = subprocess.run(
            [sys.executable, "-c", RUNNER, str(workdir / "blocks.json"), page.name],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, f"{page.name} failed:\n{result.stdout[-1500:]}\n{result.stderr[-4000:]}"
    for line, reason in skipped:
        assert len(reason.strip()) > 10, f"{page.name}:{line}: say why the block is skipped"


def test_every_page_is_covered_and_has_code():
    names = {p.name for p in PAGES}
    assert {"README.md", "hooks.md", "operators.md", "tables.md", "emulator.md"} <= names
    runnable = sum(1 for p in PAGES for lang, *_ in blocks_of(p) if lang in RUNNABLE)
    assert runnable >= 10


def test_the_harness_catches_a_broken_block(tmp_path, docs_env):
    """A wrong line in a doc would fail: the runner propagates errors."""
    (tmp_path / "blocks.json").write_text(json.dumps([[1, "x = 1"], [3, "assert x == 2, 'docs rot'"]]))
    env, _ = docs_env
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(tmp_path / "blocks.json"), "fake.md"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "docs rot" in result.stderr

"""``make test-matrix``: the Airflow-facing tests on every supported Airflow minor, and a table of the results.

For each version (latest patch of each minor) it creates ``.venv-matrix/airflow-<version>``, installs
``apache-airflow==<version>`` and this checkout with its ``test`` dependency group, pinned by the version's
constraints file kept in the repository (``constraints/airflow-<version>.txt``; 3.3.2 uses the root
``constraints.txt`` of ``make test``), then runs the tests that touch Airflow — hooks, trigger, sensor,
operators, example and test DAGs under ``dag.test()``, lineage, batches, soak, secret hygiene — and on the
oldest version also the real-deployment test (scheduler, triggerer and the rest as separate processes; the
newest runs it in ``make test``). Environments are reused while their constraints file and ``pyproject.toml``
are unchanged.

    python3 scripts/matrix.py                          # every version
    python3 scripts/matrix.py --versions 2.11.2 3.0.6  # some
    python3 scripts/matrix.py --freeze 3.1.8           # re-pin one version from a clean, unconstrained install

Standard library only (it runs before any environment exists). Exit status 1 if any version failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENVS = ROOT / ".venv-matrix"
VERSIONS = ("2.11.2", "3.0.6", "3.1.8", "3.2.2", "3.3.2")
NEWEST = VERSIONS[-1]
OLDEST = VERSIONS[0]
#: The tests that touch Airflow (the pure ones — tables, tracking, render, emulator, engine, docs — run once,
#: on the newest Airflow, in ``make test``; so does the real-deployment test for the newest).
AIRFLOW_TESTS = (
    "tests/test_hook.py",
    "tests/test_trigger.py",
    "tests/test_operators.py",
    "tests/test_example_dags.py",
    "tests/test_lineage.py",
    "tests/test_batches.py",
    "tests/test_outputs.py",
    "tests/test_readme.py",
    "tests/test_inputs.py",
    "tests/test_soak.py",
    "tests/test_key_guard.py",
    "tests/test_rate_limiter.py",
    "tests/test_status_reader.py",
)
DEPLOYMENT_TEST = "tests/test_deployment.py"
#: Pins a clean install needs beyond what the Airflow release itself declares (found by running its tasks):
#: 3.0.6's execution API breaks with fastapi >= 0.118 (HTTP 422 on every task start) and its ObjectStoragePath
#: with universal-pathlib 0.3; 3.2.2's breaks with fastapi >= 0.137 and svcs 26 (lifespan state deleted).
EXTRA_PINS = {
    "3.0.6": ("fastapi<0.118", "universal-pathlib<0.3"),
    "3.2.2": ("fastapi<0.137", "svcs<26"),
}


#: This checkout with the optional extras the tests use, and the test tools: pyproject.toml's ``test`` dependency
#: group (PEP 735, read from the working directory, ROOT; never part of the published package).
PACKAGE = ("-e", ".[pictures,pandas]", "--group", "test")


def constraints_file(version: str) -> Path:
    return ROOT / "constraints.txt" if version == NEWEST else ROOT / "constraints" / f"airflow-{version}.txt"


@dataclass
class Result:
    version: str
    install_s: float = 0.0
    test_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    failed_tests: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.counts.get("failed") and not self.counts.get("errors")


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: float | None = None) -> int:
    """Run ``cmd`` with its output appended to ``log`` (pip's and pytest's own); return its exit code."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=ROOT).returncode


def env_path(version: str) -> Path:
    return ENVS / f"airflow-{version}"


def install(version: str, log: Path) -> None:
    """Create (or reuse) the version's environment, pinned by its constraints file."""
    venv = env_path(version)
    constraints = constraints_file(version)
    stamp_text = hashlib.sha256(constraints.read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = venv / ".installed"
    if stamp.exists() and stamp.read_text() == stamp_text:
        return
    if venv.exists():
        shutil.rmtree(venv)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [*pip, "--upgrade", "pip"],
        [*pip, "-c", str(constraints), f"apache-airflow=={version}", *PACKAGE],
    ]
    for cmd in steps:
        if run(cmd, log):
            raise RuntimeError(f"install step failed: {' '.join(cmd)} (see {log})")
    stamp.write_text(stamp_text)


def timed_install(version: str) -> tuple[float, str | None]:
    """Install ``version``'s environment (its log starts afresh); ``(seconds, error or None)``."""
    log = ENVS / f"airflow-{version}.log"
    log.write_text("")
    start = time.monotonic()
    try:
        install(version, log)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as err:
        return time.monotonic() - start, str(err)
    return time.monotonic() - start, None


def freeze(version: str) -> None:
    """Re-pin ``version``: a clean install without constraints (plus EXTRA_PINS), frozen into its file."""
    venv = ENVS / f"freeze-{version}"
    if venv.exists():
        shutil.rmtree(venv)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    pins = list(EXTRA_PINS.get(version, ()))
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"apache-airflow=={version}", *pins, *PACKAGE],
        check=True,
        cwd=ROOT,
    )
    frozen = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--exclude-editable"], check=True, capture_output=True, text=True
    ).stdout
    lines = sorted(
        (line for line in frozen.splitlines() if line and not line.startswith("airflow-provider-kakaopose")),
        key=str.lower,
    )
    constraints_file(version).write_text("\n".join(lines) + "\n")
    shutil.rmtree(venv)
    print(f"wrote {constraints_file(version)} ({len(lines)} pins)")


def test(version: str, log: Path, junit: Path, deployment: bool) -> None:
    python = env_path(version) / "bin" / "python"
    tests = [*AIRFLOW_TESTS, *([DEPLOYMENT_TEST] if deployment else [])]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KAKAO_POSE"))}
    cmd = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", f"--junitxml={junit}", *tests]
    run(cmd, log, env=env, timeout=3600)


def read_junit(junit: Path, result: Result) -> None:
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {"tests": 0, "failed": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        counts["tests"] += int(suite.get("tests", 0))
        counts["failed"] += int(suite.get("failures", 0))
        counts["errors"] += int(suite.get("errors", 0))
        counts["skipped"] += int(suite.get("skipped", 0))
        for case in suite.iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                result.failed_tests.append(name)
            skipped = case.find("skipped")
            if skipped is not None:
                result.skipped.append(f"{name}: {skipped.get('message', '')}")
    counts["passed"] = counts["tests"] - counts["failed"] - counts["errors"] - counts["skipped"]
    result.counts = counts


def table(results: list[Result]) -> str:
    rows = [("Airflow", "result", "passed", "failed", "skipped", "install", "tests")]
    for r in results:
        c = r.counts
        rows.append(
            (
                r.version,
                "ok" if r.ok else ("ERROR" if r.error else "FAILED"),
                str(c.get("passed", "-")),
                str(c.get("failed", 0) + c.get("errors", 0)) if c else "-",
                str(c.get("skipped", "-")),
                f"{r.install_s:.0f} s",
                f"{r.test_s:.0f} s",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", default=list(VERSIONS), choices=VERSIONS, metavar="VERSION")
    parser.add_argument("--freeze", choices=VERSIONS, help="re-pin this version's constraints file and exit")
    parser.add_argument(
        "--deployment", choices=("oldest", "all", "none"), default="oldest", help="where to run the deployment test"
    )
    args = parser.parse_args()
    if args.freeze:
        freeze(args.freeze)
        return 0
    ENVS.mkdir(exist_ok=True)
    results = []
    # Installing is mostly downloading, testing mostly CPU: the next version installs while one is tested.
    with ThreadPoolExecutor(max_workers=1) as installer:
        installs = {version: installer.submit(timed_install, version) for version in args.versions}
        for version in args.versions:
            result = Result(version)
            log, junit = ENVS / f"airflow-{version}.log", ENVS / f"airflow-{version}.junit.xml"
            junit.unlink(missing_ok=True)
            print(f"== Airflow {version}: installing (log: {log.relative_to(ROOT)})", flush=True)
            result.install_s, result.error = installs[version].result()
            if result.error is None:
                print(f"== Airflow {version}: testing", flush=True)
                start = time.monotonic()
                deployment = args.deployment == "all" or (args.deployment == "oldest" and version == OLDEST)
                try:
                    test(version, log, junit, deployment)
                except subprocess.TimeoutExpired:
                    result.error = "tests timed out"
                result.test_s = time.monotonic() - start
                if junit.exists():
                    read_junit(junit, result)
                elif result.error is None:
                    result.error = f"pytest wrote no report (see {log})"
            results.append(result)
            print(f"== Airflow {version}: {'ok' if result.ok else 'FAILED'} {json.dumps(result.counts)}", flush=True)
            for name in result.failed_tests:
                print(f"   failed: {name}")
            if not result.ok:
                print("".join(log.read_text().splitlines(keepends=True)[-60:]))
    print("\nAirflow version matrix (the Airflow-facing tests; the whole suite runs on the newest in make test)")
    print(table(results))
    skipped = [(r.version, s) for r in results for s in r.skipped]
    if skipped:
        print("\nskipped (each with its reason, also in docs/installation.md):")
        for version, line in skipped:
            print(f"  {version}: {line}")
    passed = sum(r.counts.get("passed", 0) for r in results)
    failed = sum(r.counts.get("failed", 0) + r.counts.get("errors", 0) + (r.error is not None) for r in results)
    print(f"\nmatrix: {passed} passed, {failed} failed")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

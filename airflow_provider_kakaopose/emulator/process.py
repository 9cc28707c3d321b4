"""Run the emulator as a separate process, e.g. with the local engine from its own environment.

The engine (``--engine mediapipe``) cannot be imported beside Airflow, so tools running in the Airflow
environment (the tests, ``make demo-engine``) start it with the engine environment's Python::

    with EmulatorProcess(".venv-engine/bin/python", "--engine", "mediapipe", api_key=key) as server:
        server.base_url

Standard library only.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

#: The engine environment ``make engine-install`` creates, relative to the project root.
ENGINE_VENV = ".venv-engine"


def engine_python(root: str | os.PathLike | None = None) -> Path:
    """The engine environment's Python: ``$KAKAO_POSE_ENGINE_PYTHON``, else ``.venv-engine/bin/python`` in
    ``root``, the current directory or the source checkout this package runs from."""
    if env := os.environ.get("KAKAO_POSE_ENGINE_PYTHON"):
        return Path(env)
    if root is not None:
        return Path(root) / ENGINE_VENV / "bin" / "python"
    candidates = [Path.cwd() / ENGINE_VENV / "bin" / "python"]
    candidates.append(Path(__file__).resolve().parents[2] / ENGINE_VENV / "bin" / "python")  # a source checkout
    return next((c for c in candidates if c.exists()), candidates[0])


class EmulatorProcess:
    """``python -m airflow_provider_kakaopose.emulator ARGS --port 0`` in a child process, until :meth:`stop`.

    :param python: the interpreter to run it with.
    :param args: more command-line arguments (e.g. ``"--engine", "mediapipe"``).
    :param api_key: the only key it accepts (passed in the environment, never on the command line).
    :param startup_timeout: seconds to wait for it to listen (loading a model takes a few).
    """

    def __init__(
        self, python: str | os.PathLike, *args: str, api_key: str | None = None, startup_timeout: float = 120.0
    ) -> None:
        self.python = str(python)
        self.args = list(args)
        self.api_key = api_key
        self.startup_timeout = startup_timeout
        self.base_url: str | None = None
        self.output: list[str] = []
        self._proc: subprocess.Popen | None = None

    def start(self) -> EmulatorProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("KAKAO_POSE_EMULATOR_API_KEY", None)
        if self.api_key is not None:
            env["KAKAO_POSE_EMULATOR_API_KEY"] = self.api_key
        cmd = [self.python, "-m", "airflow_provider_kakaopose.emulator", *self.args, "--port", "0"]
        self._proc = proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        stdout = proc.stdout
        assert stdout is not None
        ready = threading.Event()

        def read() -> None:  # keep draining its output, or a chatty server blocks on a full pipe
            for line in stdout:
                self.output.append(line)
                if not ready.is_set() and (m := re.search(r"listening on (http://\S+)", line)):
                    self.base_url = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, name="emulator-output", daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while not ready.wait(0.1):
            if time.monotonic() > deadline:
                break
        if self.base_url is None:
            self.stop()
            raise RuntimeError(f"the emulator did not start ({' '.join(cmd)}):\n{''.join(self.output)[-4000:]}")
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

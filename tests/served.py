"""A `python -m engine.serve ...` subprocess for the server tests: started on a free loopback
port, waited for until /health says ok, stopped with SIGTERM (then SIGKILL)."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(env=None, drop=()) -> dict:
    """os.environ plus env, without the names in drop, with the installed engine importable."""
    out = dict(os.environ, **(env or {}), PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(engine.__file__)), os.environ.get("PYTHONPATH", "")]))
    for name in drop:
        out.pop(name, None)
    return out


class Served:
    """`python -m engine.serve *args --port P`, up and warmed; log in log_dir/server.log."""

    def __init__(self, log_dir: Path, *args, env=None, drop_env=(), timeout=60):
        self.port = free_port()
        self.log = open(Path(log_dir) / "server.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "engine.serve", *args, "--port", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env=server_env(env, drop_env))
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.close()
                pytest.fail(f"server did not start within {timeout} s")
            time.sleep(0.2)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def health(self) -> dict:
        return httpx.get(self.base + "/health", timeout=10).json()

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

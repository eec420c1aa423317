"""A real redis-server on a free loopback port, for the cache tests and the benchmark.

Never the machine's own Redis: each RedisServer runs its own process with no persistence,
and can be killed (SIGKILL), paused (SIGSTOP) and started again on the same port.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.parse
from pathlib import Path

import redis

from service.testing.servers import ROOT, free_port, terminate, wait_for

TOOLS = ROOT / ".tools" / "redis"  # scripts/install_test_tools.sh unpacks here without root


def redis_server_binary() -> tuple[str, dict[str, str]]:
    """The binary and the environment to run it with."""
    unpacked = TOOLS / "bin" / "redis-server"
    if unpacked.exists():
        libraries = str(TOOLS / "usr" / "lib" / "x86_64-linux-gnu")
        return str(unpacked), {**os.environ, "LD_LIBRARY_PATH": libraries}
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if found is None:
        raise RuntimeError("redis-server not found: `make test` installs it (scripts/install_test_tools.sh)")
    return found, dict(os.environ)


class RedisServer:
    """tls_cert: a PEM certificate (and its key) to serve TLS only, on `port`."""

    def __init__(self, workdir: Path, *, password: str | None = None, tls_cert: Path | None = None,
                 tls_key: Path | None = None):
        self.workdir = workdir
        self.password = password
        self.tls_cert, self.tls_key = tls_cert, tls_key
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        if self.tls_cert is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls_cert}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary, env = redis_server_binary()
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir)]
        if self.tls_cert is not None:
            args[1:3] = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls_cert),
                         "--tls-key-file", str(self.tls_key), "--tls-ca-cert-file", str(self.tls_cert),
                         "--tls-auth-clients", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for(self._answers, 10, what=f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{self.log_path.read_text()}")
        try:
            with self.client(timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def client(self, timeout: float = 5.0) -> redis.Redis:
        """A synchronous client, to inspect what the service stored."""
        return redis.Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, connections drop, the data are gone."""
        self._signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a slow, hung Redis)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()  # a paused server would ignore SIGTERM
            terminate(self.process, 10)


"""A throwaway nginx on 127.0.0.1 serving the corpus, as a child process of the benchmark.

nginx runs in the foreground (``daemon off``) with its own prefix, pid, log and temp paths in the
work dir, one worker process (to leave the CPU to the clients) and keep-alive on. It is always
stopped: by the context manager, by an ``atexit`` hook, and on SIGTERM (turned into SystemExit by
the caller's signal handler).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

NGINX = "/usr/sbin/nginx"
INSTALL_COMMAND = "apt-get update && apt-get install -y nginx"


class ServerError(RuntimeError):
    """nginx is missing or failed to start."""


def ensure_nginx(install: bool = True, timeout_s: float = 600) -> str:
    """Return the nginx binary, installing Debian's package first if allowed and possible."""
    found = shutil.which("nginx") or (NGINX if os.path.exists(NGINX) else None)
    if found:
        return found
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ServerError(f"nginx not found; install it with:  {INSTALL_COMMAND}")
    logger.info("nginx not found: running %r", INSTALL_COMMAND)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "nginx"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise ServerError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}"
                              f"\ninstall nginx by hand with:  {INSTALL_COMMAND}")
    if not os.path.exists(NGINX):
        raise ServerError(f"nginx still missing after install; try:  {INSTALL_COMMAND}")
    # Debian's package starts a system nginx on port 80: this benchmark does not need it.
    subprocess.run(["service", "nginx", "stop"], capture_output=True, timeout=60, check=False)
    return NGINX


def nginx_version(binary: str = NGINX) -> str:
    """The version ``nginx -v`` prints (to stderr), e.g. ``1.22.1``."""
    try:
        proc = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (proc.stderr or proc.stdout).strip()
    return text.removeprefix("nginx version: ").removeprefix("nginx/")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _config(root: Path, prefix: Path, port: int, workers: int) -> str:
    temp = prefix / "tmp"
    user = "user root;\n" if os.geteuid() == 0 else ""  # serve files root can read
    return f"""{user}worker_processes {workers};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    open_file_cache max=20000 inactive=60s;
    types {{ image/jpeg jpg jpeg; image/png png; image/webp webp; }}
    default_type application/octet-stream;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        server_name localhost;
        root {root};
        location / {{ }}
    }}
}}
"""


class NginxServer:
    """nginx serving ``root`` on ``http://127.0.0.1:PORT/``; use as a context manager."""

    def __init__(self, root: Path, prefix: Path, binary: str = NGINX, workers: int = 1,
                 port: int = 0) -> None:
        self.root = root.resolve()
        self.prefix = prefix.resolve()
        self.binary = binary
        self.workers = workers
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The master's pid and its workers' (for CPU accounting of the server side)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            import psutil

            master = psutil.Process(self.proc.pid)
            return [master.pid] + [c.pid for c in master.children(recursive=True)]
        except Exception:  # noqa: BLE001 - accounting is best effort
            return [self.proc.pid]

    def start(self, timeout_s: float = 15) -> None:
        """Write the config, start nginx and wait until it accepts connections."""
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(_config(self.root, self.prefix, self.port, self.workers))
        cmd = [self.binary, "-p", str(self.prefix), "-c", str(conf),
               "-e", str(self.prefix / "error.log")]
        test = subprocess.run(cmd + ["-t", "-q"], capture_output=True, text=True, timeout=30)
        if test.returncode != 0:
            raise ServerError(f"nginx config test failed: {test.stderr.strip()}")
        log = open(self.prefix / "stderr.log", "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"nginx exited with {self.proc.returncode}: "
                                  f"{(self.prefix / 'error.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    logger.info("nginx %s serving %s at %s (pid %d)", nginx_version(self.binary),
                                self.root, self.base_url, self.proc.pid)
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ServerError(f"nginx did not accept connections within {timeout_s} s")

    def stop(self, timeout_s: float = 10) -> None:
        """Stop nginx (SIGQUIT, then SIGTERM, then SIGKILL to its own process group)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            for sig, wait_s in ((signal.SIGQUIT, timeout_s / 2), (signal.SIGTERM, timeout_s / 2)):
                try:
                    proc.send_signal(sig)
                    proc.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: only nginx is in it
                proc.wait(5)
            logger.info("nginx stopped (exit %s)", proc.returncode)
        self._log.close()
        atexit.unregister(self.stop)

    def __enter__(self) -> NginxServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

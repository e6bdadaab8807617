"""Parts of ``parkwatch cloud serve`` that run as child processes (``parkwatch cloud …`` commands).

A part whose work is Python-heavy (the materializer) runs in a process of its own, so it does not
take the interpreter lock from the MQTT receiver. Under systemd each such part is a unit of its
own, restarted by systemd; in the one-box ``cloud serve`` this class does the service manager's
job for it: starts the same command, restarts it with a back-off when it dies, stops it with
SIGTERM and waits for its short drain. The child gets the config as JSON on stdin (secrets stay
references to their files or variables) and the supervisor's pid, and exits if the supervisor goes
away without stopping it, so a killed ``serve`` leaves no process holding the inbox's lock.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from shared.backoff import Backoff

log = logging.getLogger("parkwatch.cloud.children")

RESTART_BACKOFF_S = 2.0
HEALTHY_RUN_S = 60.0  # a child that ran this long before dying is restarted at once
STOP_TIMEOUT_S = 60.0


def parkwatch_argv() -> list[str]:
    """This interpreter running the ``parkwatch`` command (the same code, PYTHONPATH inherited)."""
    return [sys.executable, "-m", "shared.cli"]


class ChildProcess:
    """One ``parkwatch`` command kept running as a child of this process."""

    def __init__(self, name: str, args: list[str], config_json: str) -> None:
        self.name = name
        self.args = args
        self._config_json = config_json
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._backoff = Backoff(RESTART_BACKOFF_S, 60.0)
        self.restarts = 0
        self.last_error: str | None = None

    @property
    def pid(self) -> int | None:
        p = self._proc
        return p.pid if p is not None else None

    @property
    def alive(self) -> bool:
        p = self._proc
        return p is not None and p.poll() is None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        with self._lock:
            self._spawn()
        self._thread = threading.Thread(target=self._watch, name=f"child-{self.name}", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        env = dict(os.environ)
        if "PARKWATCH_LOG_LEVEL" not in env:
            env["PARKWATCH_LOG_LEVEL"] = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        argv = [*parkwatch_argv(), *self.args, "--config-stdin", "--watch-parent", str(os.getpid())]
        # Its own session: a Ctrl-C in the terminal reaches serve, which stops the parts in order
        # (the receiver's last commit first, then this child's drain), not everything at once.
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, env=env, start_new_session=True)
        assert p.stdin is not None
        try:
            p.stdin.write(self._config_json.encode())
            p.stdin.close()
        except BrokenPipeError:
            pass  # it died at once: the watcher sees the exit and says so
        self._proc = p
        self._started = time.monotonic()
        log.info("started %s (pid %d)", self.name, p.pid)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            p = self._proc
            assert p is not None
            code = p.wait()
            if self._stopping.is_set():
                return
            lived = time.monotonic() - self._started
            # Back off while it keeps dying at start-up (fleet store unreachable, say); a crash after a
            # long healthy run is restarted at once.
            if lived > HEALTHY_RUN_S:
                self._backoff.reset()
            delay = self._backoff.next()
            self.last_error = (
                f"{self.name} exited with status {code} after {lived:.0f} s; restarting it in "
                f"{delay:.0f} s (its own error is in the log above)"
            )
            log.error("%s", self.last_error)
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.restarts += 1
                self._spawn()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        self._stopping.set()
        with self._lock:
            p = self._proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("%s did not stop in %.0f s; killing it", self.name, timeout)
                p.kill()
                p.wait(10)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

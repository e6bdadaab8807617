"""systemd's notify protocol (``Type=notify`` + ``WatchdogSec``) without a dependency.

The protocol is one datagram of ``KEY=VALUE`` lines to the unix socket named by
``$NOTIFY_SOCKET``; a leading ``@`` means the abstract namespace. Outside systemd the variable
is unset and every call is a cheap no-op, so the daemon runs the same under ``parkwatch edge
run`` in a terminal.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("parkwatch.edge.sdnotify")


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET") or None
        self._sock: socket.socket | None = None
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def _target(self) -> str:
        assert self.address
        return "\0" + self.address[1:] if self.address.startswith("@") else self.address

    def notify(self, **fields: str | int) -> bool:
        """Send ``READY=1`` style fields; returns False (and counts) if systemd is not listening."""
        if not self.address:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(msg, self._target())
            return True
        except OSError as e:
            self.errors += 1
            if self.errors == 1:
                log.warning("cannot notify systemd at %s: %s", self.address, e)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify(READY=1, STATUS=status) if status else self.notify(READY=1)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str = "") -> bool:
        return self.notify(STOPPING=1, STATUS=status) if status else self.notify(STOPPING=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s() -> float | None:
    """Half of ``$WATCHDOG_USEC`` (systemd's advice), or None when no watchdog is configured."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        return max(int(usec) / 2_000_000, 0.05)
    except ValueError:
        return None

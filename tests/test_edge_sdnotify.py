"""sd_notify against a real unix datagram socket (what systemd listens on)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from edge.sdnotify import Notifier, watchdog_interval_s


def test_ready_and_watchdog_reach_a_real_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(2)
    try:
        n = Notifier(path)
        assert n.ready("classifying")
        assert srv.recv(4096).decode().splitlines() == ["READY=1", "STATUS=classifying"]
        assert n.watchdog()
        assert srv.recv(4096) == b"WATCHDOG=1"
        n.close()
    finally:
        srv.close()


def test_abstract_namespace_socket() -> None:
    name = f"@parkwatch-test-{os.getpid()}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind("\0" + name[1:])
    srv.settimeout(2)
    try:
        assert Notifier(name).stopping()
        assert srv.recv(4096) == b"STOPPING=1"
    finally:
        srv.close()


def test_no_socket_is_a_no_op_and_a_dead_socket_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert Notifier().ready() is False
    dead = Notifier(str(tmp_path / "nobody-listens"))
    assert dead.watchdog() is False
    assert dead.errors == 1


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval_s() is None

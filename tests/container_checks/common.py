"""Helpers for the in-container checks: systemctl queries, waiting on conditions, results."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKS = Path("/checks")
PARAMS: dict[str, Any] = json.loads((CHECKS / "params.json").read_text())


def log(msg: str) -> None:
    print(f"[{time.monotonic():9.2f}] {msg}", flush=True)


def sh(
    *cmd: str, check: bool = False, timeout: float = 900, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run a command; (exit code, stdout+stderr). Logged so a failure is easy to read."""
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env)
    out = p.stdout + p.stderr
    log(f"$ {' '.join(cmd)} -> {p.returncode}\n{out[-3000:]}")
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {out[-2000:]}")
    return p.returncode, out


def show(unit: str, *props: str) -> dict[str, str]:
    p = subprocess.run(
        ["systemctl", "show", unit, *(f"--property={x}" for x in props)], capture_output=True, text=True
    )
    return dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)


def wait_for(what: str, cond: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    """Poll ``cond`` until it returns something truthy; raise naming ``what`` after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(every)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def outbox(db: str = "/var/lib/parkwatch/outbox.db") -> dict[str, int]:
    """count, min and max seq of the rows waiting (read-only; the daemon may be writing)."""
    if not Path(db).exists():
        return {"count": 0, "min": 0, "max": 0}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        n, lo, hi = conn.execute("SELECT COUNT(*), MIN(seq), MAX(seq) FROM predictions").fetchone()
    finally:
        conn.close()
    return {"count": int(n), "min": int(lo or 0), "max": int(hi or 0)}


def main_pid(unit: str) -> int:
    return int(show(unit, "MainPID")["MainPID"])


def run_checks(name: str, body: Callable[[dict[str, Any]], None]) -> None:
    """Run ``body(results)``; always write the results (with the error, if any) for the host."""
    results: dict[str, Any] = {}
    try:
        body(results)
    except Exception as e:
        import traceback

        results["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    (CHECKS / f"{name}.json").write_text(json.dumps(results, indent=2))
    sys.exit(1 if "error" in results else 0)

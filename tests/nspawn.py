"""A real systemd (PID 1) in a Debian container, for tests of the units and install scripts.

systemd is not PID 1 on the development machines or in CI, but ``systemd-nspawn -b`` boots a
Debian rootfs with systemd as its init. The rootfs is built once with ``debootstrap`` (about two
minutes) and cached under ``/var/cache/parkwatch-test/rootfs-<hash of the package list>`` (or
``$PARKWATCH_ROOTFS_CACHE``), so repeated runs and CI reuse it; every test boots its own copy.

The Debian mirror is read from the host's apt sources at run time, and the host's pip
configuration (files and the local folders it names) is handed into the container, so ``pip``
inside resolves packages exactly like on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = (
    "ca-certificates",
    "dbus",
    "mosquitto",
    "procps",
    "python3",
    "python3-venv",
    "systemd",
    "systemd-sysv",
)
# Bump when cached_rootfs() changes what it does after debootstrap, so caches are rebuilt.
RECIPE = 1
CACHE_ENV = "PARKWATCH_ROOTFS_CACHE"
CHECKS_SRC = Path(__file__).resolve().parent / "container_checks"
DEFAULT_CACHE = Path("/var/cache/parkwatch-test")
INSTALL_HINT = "sudo provisioning/system-deps.sh container  (installs systemd-container debootstrap)"


class ContainerUnavailable(RuntimeError):
    """This machine cannot boot a test container; the message says what to install or do."""


def tool(name: str) -> str | None:
    """``name`` on PATH or in the sbin folders a non-root PATH lacks."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def missing_tools() -> list[str]:
    return [t for t in ("systemd-nspawn", "debootstrap") if tool(t) is None]


def require_tools() -> None:
    missing = missing_tools()
    if missing:
        raise ContainerUnavailable(f"{', '.join(missing)} missing: run {INSTALL_HINT}")
    if os.geteuid() != 0:
        raise ContainerUnavailable("booting a container needs root (systemd-nspawn, debootstrap)")


def parse_mirror(sources: str, suite: str = SUITE) -> str | None:
    """The first ``URIs:`` of a deb822 stanza whose ``Suites:`` has ``suite`` itself."""
    for stanza in re.split(r"\n\s*\n", sources):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
            if m:
                fields[m.group(1).lower()] = m.group(2).strip()
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
            uris = fields.get("uris", "").split()
            if uris:
                return uris[0]
    for line in sources.splitlines():  # one-line format: deb [options] URI suite components
        parts = re.sub(r"\[[^\]]*\]", " ", line).split()
        if len(parts) >= 3 and parts[0] == "deb" and parts[2] == suite:
            return parts[1]
    return None


def host_mirror() -> str:
    paths = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    paths += sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for p in paths:
        if p.is_file():
            mirror = parse_mirror(p.read_text(errors="replace"))
            if mirror:
                return mirror
    raise ContainerUnavailable(
        f"no Debian {SUITE} mirror in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list"
    )


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def rootfs_key() -> str:
    recipe = f"{RECIPE} {SUITE} {VARIANT} {' '.join(sorted(PACKAGES))}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def cached_rootfs() -> Path:
    """The pristine rootfs for this package list, built under a lock on first use."""
    require_tools()
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"rootfs-{rootfs_key()}"
    with (root / f"rootfs-{rootfs_key()}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".complete").exists():
            return final
        work = root / f"rootfs-{rootfs_key()}.building"
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        cmd = [
            str(tool("debootstrap")),
            f"--variant={VARIANT}",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(work),
            host_mirror(),
        ]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            log = work / "debootstrap/debootstrap.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise ContainerUnavailable(f"debootstrap failed ({p.returncode}): {p.stderr[-2000:]}\n{tail}")
        # The image's own services that would only slow every boot down or need hardware.
        wants = work / "etc/systemd/system/multi-user.target.wants"
        (wants / "mosquitto.service").unlink(missing_ok=True)
        (work / "etc/hostname").write_text("parkwatch-test\n")
        (work / ".complete").write_text(" ".join(cmd[:-2]) + "\n")
        work.rename(final)
        return final


def venv_key(repo: Path) -> str:
    """What decides a venv's third-party contents: the rootfs (its Python), the dependency lists
    of pyproject.toml and constraints.txt. parkwatch's own code is not part of it: pip always
    re-installs a local checkout, so a restored venv gets the code under test."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())
    blob = json.dumps(
        {
            "rootfs": rootfs_key(),
            "build": project.get("build-system", {}),
            "deps": project["project"].get("dependencies", []),
            "extras": project["project"].get("optional-dependencies", {}),
            "constraints": (repo / "constraints.txt").read_text(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _link_tree(src: Path, dest: Path) -> None:
    """Hard links when both sides share a file system (seconds for ~5 GB), else a copy.

    Safe to share inodes: pip unlinks a file before writing it and compiles .pyc by rename,
    and the container's services cannot write the root-owned venv.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["cp", "-al", str(src), str(dest)], capture_output=True).returncode != 0:
        subprocess.run(["rm", "-rf", "--one-file-system", str(dest)], check=False)
        subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dest)], check=True)


def restore_venv(name: str, key: str, dest: Path) -> bool:
    """Put the cached venv ``name``-``key`` at ``dest`` (inside a container copy); False if none."""
    cached = cache_dir() / f"{name}-{key}"
    if not (cached / ".complete").exists():
        return False
    _link_tree(cached / "venv", dest)
    return True


def save_venv(name: str, key: str, src: Path) -> None:
    """Keep the venv a container built (after its install passed) for the next run; older
    keys of ``name`` are dropped (a cloud venv is ~5 GB)."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{name}-{key}"
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".complete").exists():
            return
        for old in root.glob(f"{name}-*"):
            subprocess.run(["rm", "-rf", "--one-file-system", str(old)], check=False)
        work = root / f"{name}-{key}.building"
        work.mkdir(parents=True)
        _link_tree(src, work / "venv")
        (work / ".complete").write_text(f"{src}\n")
        work.rename(final)


def _pip_config_files() -> list[tuple[Path, str]]:
    """(host file, path inside): site, XDG, the user's (root's inside) and $PIP_CONFIG_FILE."""
    home = Path.home()
    files = [
        (Path("/etc/pip.conf"), "/etc/pip.conf"),
        (Path("/etc/xdg/pip/pip.conf"), "/etc/xdg/pip/pip.conf"),
        (home / ".config/pip/pip.conf", "/root/.config/pip/pip.conf"),
        (home / ".pip/pip.conf", "/root/.pip/pip.conf"),
    ]
    if os.environ.get("PIP_CONFIG_FILE"):
        f = Path(os.environ["PIP_CONFIG_FILE"])
        files.append((f, str(f)))
    return [(f, inside) for f, inside in files if f.is_file()]


def _local_paths_in(text: str) -> set[Path]:
    """Files and folders on this machine that a pip config names (file:// URLs or absolute paths)."""
    found: set[Path] = set()
    for tok in re.findall(r"(?:file://)?(/[^\s'\"=,]+)", text):
        p = Path(tok)
        # the CA bundle pip is told to trust is copied in too (a proxy's CA may be in it)
        if p.is_file() or (p.is_dir() and not str(p).startswith("/etc/")):
            found.add(p)
    return found


def pip_env_and_paths() -> tuple[dict[str, str], list[Path]]:
    """PIP_* variables, and the host files and folders they and the pip config files name."""
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_") and k != "PIP_CONFIG_FILE"}
    text = "\n".join([*(f.read_text() for f, _ in _pip_config_files()), *env.values()])
    return env, sorted(_local_paths_in(text))


@dataclass
class Container:
    """One copy of the cached rootfs: write files into ``root``, then :meth:`boot` it (maybe twice)."""

    root: Path
    binds_ro: list[tuple[Path, str]] = field(default_factory=list)
    binds_rw: list[tuple[Path, str]] = field(default_factory=list)

    @classmethod
    def copy_of(cls, pristine: Path, dest: Path) -> Container:
        subprocess.run(["cp", "-a", "--reflink=auto", str(pristine), str(dest)], check=True)
        c = cls(dest)
        env, paths = pip_env_and_paths()
        for f, inside in _pip_config_files():
            c.put_file(f, inside)
        for p in paths:
            if p.is_dir():
                # a local PEP 503 index (.../simple) links to its files beside it: take the parent
                d = p.parent if p.name == "simple" else p
                c.binds_ro.append((d, str(d)))
            else:
                c.put_file(p, str(p))
        lines = [f"{k}={v}" for k, v in sorted(env.items())]
        (dest / "etc/parkwatch-test.env").write_text("\n".join(lines) + "\n")
        return c

    def remove(self) -> None:
        """Delete the copy (a cloud install is ~5 GB), keeping /checks beside it for reading."""
        if self.path("/checks").is_dir():
            shutil.copytree(self.path("/checks"), self.root.parent / "checks", dirs_exist_ok=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=False)

    def put_file(self, host: Path, inside: str) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(host, target)

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def install_checks(self, params: Mapping[str, object]) -> None:
        """Copy tests/container_checks to /checks with the test's parameters."""
        checks = self.path("/checks")
        checks.mkdir(parents=True, exist_ok=True)
        for f in CHECKS_SRC.glob("*.py"):
            shutil.copy2(f, checks / f.name)
        (checks / "params.json").write_text(json.dumps(params, indent=2))

    def enable_oneshot(self, name: str, then: str = "poweroff") -> None:
        """At the next boot run /checks/NAME.py once (log in /checks/NAME.log), then ``then``
        (poweroff or reboot); the checks of an earlier boot are disabled."""
        unit = f"""[Unit]
Description=parkwatch test checks ({name})
After=multi-user.target
[Service]
Type=oneshot
EnvironmentFile=-/etc/parkwatch-test.env
WorkingDirectory=/checks
ExecStart=/bin/sh -c 'python3 /checks/{name}.py > /checks/{name}.log 2>&1; echo $? > /checks/{name}.rc'
ExecStartPost=/bin/systemctl --no-block {then}
TimeoutStartSec=infinity
[Install]
WantedBy=multi-user.target
"""
        wants = self.path("/etc/systemd/system/multi-user.target.wants")
        wants.mkdir(parents=True, exist_ok=True)
        for old in wants.glob("parkwatch-checks-*"):
            old.unlink()
        self.path(f"/etc/systemd/system/parkwatch-checks-{name}.service").write_text(unit)
        (wants / f"parkwatch-checks-{name}.service").symlink_to(
            f"/etc/systemd/system/parkwatch-checks-{name}.service"
        )

    def boot(self, name: str, timeout: float = 600) -> tuple[int, str, dict[str, Any]]:
        """Boot until the checks' unit powers off or reboots; (exit code, log, JSON results).

        On ``timeout`` nspawn gets SIGTERM (it asks the container's systemd to power off), then
        SIGKILL, so no container outlives the test.
        """
        cmd = [str(tool("systemd-nspawn")), "-D", str(self.root), "--register=no", "--keep-unit", "-b"]
        cmd += ["--console=pipe", "--quiet"]
        for src, dst in self.binds_ro:
            cmd.append(f"--bind-ro={src}:{dst}")
        for src, dst in self.binds_rw:
            cmd.append(f"--bind={src}:{dst}")
        console = self.root.parent / f"{self.root.name}-{name}.console"
        timed_out = False
        with console.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        checks_log = self.path(f"/checks/{name}.log")
        text = checks_log.read_text(errors="replace") if checks_log.exists() else ""
        rc_file = self.path(f"/checks/{name}.rc")
        if timed_out or not rc_file.exists():
            why = f"timed out after {timeout:.0f} s" if timed_out else f"exited {proc.returncode}"
            raise AssertionError(
                f"the container {why} before the checks of {name} finished\n{text[-6000:]}\n"
                f"--- console ---\n{console.read_text(errors='replace')[-4000:]}"
            )
        results_file = self.path(f"/checks/{name}.json")
        results = json.loads(results_file.read_text()) if results_file.exists() else {}
        return int(rc_file.read_text().strip()), text, results


def copy_checkout(repo: Path, dest: Path) -> None:
    """The project as a technician's ``git clone`` would have it (no venv, caches or builds)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for rel in out.splitlines():
        if (repo / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / rel, dest / rel)


@contextlib.contextmanager
def fresh_container(tmp_path: Path) -> Iterator[Container]:
    """A copy of the cached rootfs for one test, deleted afterwards (its /checks kept).

    Fails (never skips) with an install hint when this machine cannot boot containers: the
    systemd tests are part of the suite, and ``make test`` installs what they need.
    """
    import pytest

    try:
        pristine = cached_rootfs()
    except ContainerUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    c = Container.copy_of(pristine, tmp_path / "rootfs")
    try:
        yield c
    finally:
        c.remove()


if __name__ == "__main__":
    print(cached_rootfs())

"""Pure judgement of a rollout: how far it got, and whether it must be rolled back.

Inputs are plain data (device states, telemetry samples), so every rule is unit-testable and
the component that feeds them (service.ReleaseService) holds no policy of its own.

Rolled back automatically, within ``release.watch_window_s`` of the rollout's start, when:
* at least ``max_self_test_failures`` devices of the group report ``failed`` for the rollout:
  a self-test failure, or a refusal (untrusted signature, expired metadata, hash mismatch...)
  that a box reports before it even knows the version (its ``version`` is then empty, so it is
  matched by time: reported after the rollout started). A download that failed is not counted:
  the box retries it by itself. Or
* post-deploy health on the new version breaks a threshold: inference errors grew by more than
  ``max_inference_errors`` on a device, the group's median p99 latency exceeds
  ``max_latency_p99_ms``, or the group's mean abstain rate rose by more than
  ``max_abstain_rate_jump`` over its level before the rollout.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloud.release.config import ReleaseConfig

if TYPE_CHECKING:  # pure module: the store (sqlite) is only named, never imported
    from cloud.release.store import DeviceState


@dataclass(frozen=True)
class HealthSample:
    device: str
    ts: float
    model_version: str | None
    inference_errors: int
    p99_ms: float | None
    abstain_rate: float | None


@dataclass(frozen=True)
class Progress:
    total: int
    active: int
    failed: list[dict[str, Any]] = field(default_factory=list)
    by_state: dict[str, int] = field(default_factory=dict)
    by_version: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    action: str  # "none" | "succeeded" | "rollback"
    reason: str | None = None


# A failure at this stage is retried by the box itself; it says nothing about the release.
TRANSIENT_FAILURE = ("downloading",)


def counts_against(f: Mapping[str, Any]) -> bool:
    return not str(f.get("reason") or "").startswith(TRANSIENT_FAILURE)


def progress(
    version: str,
    members: Iterable[str],
    states: Mapping[str, DeviceState],
    *,
    since_ts: float | None = None,
) -> Progress:
    """Count a group's devices: ``members`` are device keys, ``states`` their latest model/state.

    A ``failed`` state counts for ``version`` when it names it, or names no version at all (a
    TUF refusal happens before the box reads the version) and was reported at or after
    ``since_ts`` (the rollout's start), so an old refusal is not blamed on a new rollout."""
    total = active = 0
    failed: list[dict[str, Any]] = []
    by_state: dict[str, int] = {}
    by_version: dict[str, int] = {}
    for key in members:
        total += 1
        st = states.get(key)
        name = st.state if st else "unknown"
        by_state[name] = by_state.get(name, 0) + 1
        running = (st.active_version if st else None) or "none"
        by_version[running] = by_version.get(running, 0) + 1
        if st and st.state == "active" and st.active_version == version:
            active += 1
        elif st and st.state == "failed" and _about(st, version, since_ts):
            failed.append({"device": key, "reason": st.reason, "ts": st.ts, "version": st.version})
    return Progress(total, active, failed, by_state, by_version)


def _about(st: DeviceState, version: str, since_ts: float | None) -> bool:
    if st.version == version:
        return True
    return not st.version and (since_ts is None or float(st.ts or 0) >= since_ts)


def health_breach(
    version: str, started_ts: float, samples: Iterable[HealthSample], cfg: ReleaseConfig
) -> str | None:
    before: dict[str, HealthSample] = {}
    first_new: dict[str, HealthSample] = {}
    last_new: dict[str, HealthSample] = {}
    for s in sorted(samples, key=lambda s: s.ts):
        if s.ts < started_ts:
            before[s.device] = s
        elif s.model_version == version:
            first_new.setdefault(s.device, s)
            last_new[s.device] = s
    for dev, last in last_new.items():
        first = first_new[dev]
        grown = last.inference_errors - first.inference_errors
        if grown < 0:  # the counter restarted with the process
            grown = last.inference_errors
        if grown > cfg.max_inference_errors:
            return f"{dev}: {grown} inference errors on {version} (limit {cfg.max_inference_errors})"
    p99s = [s.p99_ms for s in last_new.values() if s.p99_ms is not None]
    if p99s and statistics.median(p99s) > cfg.max_latency_p99_ms:
        return (
            f"median p99 latency {statistics.median(p99s):.0f} ms on {version} exceeds "
            f"{cfg.max_latency_p99_ms:.0f} ms"
        )
    now_rates = [s.abstain_rate for s in last_new.values() if s.abstain_rate is not None]
    base_rates = [s.abstain_rate for s in before.values() if s.abstain_rate is not None]
    if now_rates and base_rates:
        jump = statistics.fmean(now_rates) - statistics.fmean(base_rates)
        if jump > cfg.max_abstain_rate_jump:
            return (
                f"abstain rate rose by {jump:.2f} on {version} (from {statistics.fmean(base_rates):.2f}; "
                f"limit {cfg.max_abstain_rate_jump:.2f})"
            )
    return None


def judge(
    version: str,
    started_ts: float,
    now: float,
    prog: Progress,
    samples: Iterable[HealthSample],
    cfg: ReleaseConfig,
) -> Verdict:
    in_window = now - started_ts <= cfg.watch_window_s
    refused = [f for f in prog.failed if counts_against(f)]
    if in_window and len(refused) >= cfg.max_self_test_failures:
        names = ", ".join(f"{f['device']} ({f['reason']})" for f in refused[:3])
        what = (
            "failed the self-test of"
            if all(str(f.get("reason") or "").startswith("self-testing") for f in refused)
            else "failed or refused"
        )
        return Verdict("rollback", f"{len(refused)} device(s) {what} {version}: {names}")
    if in_window:
        breach = health_breach(version, started_ts, samples, cfg)
        if breach:
            return Verdict("rollback", f"post-deploy health: {breach}")
    if prog.total > 0 and prog.active == prog.total:
        return Verdict("succeeded")
    return Verdict("none")

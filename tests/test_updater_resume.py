"""A package download interrupted by the broker going away resumes where it stopped."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from shared.broker import EmbeddedBroker
from tests.fixtures_models import baseline_package  # noqa: F401
from tests.release_support import Setup, version_of, wait_for


def test_download_interrupted_by_broker_restart_resumes_and_completes(
    tmp_path: Path,
    broker: EmbeddedBroker,
    baseline_package: Path,  # noqa: F811
) -> None:
    s = Setup(tmp_path, broker, baseline_package, chunk_bytes=64 * 1024, request_timeout_s=2.0)
    try:
        assert s.updater.check_once() == "current"
        s.ch.rollout("2.0.0", "staging", "eng", "new")
        length = s.ch.repo.builds()["2.0.0"].length
        cache = s.ecfg.state_dir / "updater" / "cache"
        result: list[str] = []
        t = threading.Thread(target=lambda: result.append(s.updater.check_once()), daemon=True)
        t.start()

        def part_size() -> int:
            parts = list(cache.glob("*.part"))
            return parts[0].stat().st_size if parts else 0

        wait_for(lambda: part_size() > length // 3, 120, "a third of the package")
        broker.stop()
        at_drop = part_size()
        time.sleep(3)
        broker.start()
        t.join(300)
        assert result == ["active"], s.host.states[-1]
        assert version_of(s.host.model_slot.current) == "2.0.0"
        target_requests = [off for path, off in s.updater.channel.requests if path.startswith("targets/")]
        assert target_requests.count(0) == 1, "the transfer restarted from the beginning"
        resumed_from = [off for off in target_requests if off >= at_drop]
        assert resumed_from and min(resumed_from) <= at_drop + 64 * 1024
        assert 0 < at_drop < length
    finally:
        s.close()

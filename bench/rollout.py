"""Issue 5 benchmark: approval to N/N devices active, and MQTT transfer against the disk.

Starts Mosquitto with generated per-device credentials and ACL, the real ReleaseService, and N
real edge updaters (each its own MQTT connection, second ONNX Runtime session, golden-sample
self-test). Then times:

* approval → N/N active: ``approve`` (approver signature) + ``rollout`` (rollout signature,
  retained notice) until every box has swapped the new model in and reported ``active``;
  the ratio is against the goal GOAL_S (< 1.0 is within it);
* transfer throughput: one box downloading the package over the update channel (TUF-verified
  afterwards) against reading the same file from disk; prints MB/s for both and the ratio.

Usage: python bench/rollout.py [--devices N] [--chunk-kib K] [--package DIR]
(without --package the untrained baseline package is built once, ~20 s, into a temp folder)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GOAL_S = 120.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--chunk-kib", type=int, default=1024)
    ap.add_argument("--package", type=Path, help="a model package folder to use as the base")
    args = ap.parse_args()

    from cloud.release.channel import ReleaseChannel
    from cloud.release.server import ReleaseService
    from edge.updater.fetcher import download_resumable
    from edge.updater.runner import start_updater
    from shared.broker import EmbeddedBroker
    from shared.protocol.targets import group_download_path
    from tests.release_support import (
        EdgeHost,
        cloud_config,
        edge_config,
        initial_model,
        make_version,
        mqtt_cfg,
        register,
        wait_for,
    )

    work = Path(tempfile.mkdtemp(prefix="pw-bench-rollout-"))
    chunk = args.chunk_kib * 1024
    n = args.devices
    hosts, ups = [], []
    svc = broker = None
    try:
        base = args.package
        if base is None:
            from cloud.training.untrained import build_baseline_package

            print("building the baseline package once ...", flush=True)
            base = build_baseline_package(work / "base")
        secrets = work / "secrets"
        prov = ReleaseChannel(cloud_config(work / "cloud", mqtt_cfg(1)))
        prov.cloud_account(secrets / "cloud.secret", "bench")
        for i in range(n):
            prov.provision_device("park1", f"box{i:03d}", "staging", secrets / f"box{i:03d}.secret", "bench")
        files = prov.render_broker()
        prov.registry.close()
        broker = EmbeddedBroker(
            work / "broker",
            allow_anonymous=False,
            extra_conf=f"password_file {files['passwd']}\nacl_file {files['acl']}\n",
        )
        broker.start()
        cfg = cloud_config(
            work / "cloud",
            mqtt_cfg(broker.port, "parkwatch-cloud", secrets / "cloud.secret", "bench-release"),
            chunk_bytes=chunk,
        )
        svc = ReleaseService(cfg)
        svc.start()
        assert svc.wait_connected()
        ch = svc.channel
        assert ch is not None
        ch.keys_init("bench", allow_approver_key_on_server=True)
        v1 = make_version(base, work / "pkgs", "1.0.0")
        v2 = make_version(base, work / "pkgs", "2.0.0")
        register(cfg, v1, "1.0.0")
        register(cfg, v2, "2.0.0")
        ch.approve("1.0.0", "staging", "bench", "baseline")
        ch.rollout("1.0.0", "staging", "bench", "baseline")
        root = work / "root.json"
        root.write_bytes(ch.repo.trusted_root_bytes())
        running = initial_model(v1)
        for i in range(n):
            name = f"box{i:03d}"
            ecfg = edge_config(
                work / "edge" / name,
                mqtt_cfg(broker.port, name, secrets / f"{name}.secret"),
                root,
                name,
                chunk_bytes=chunk,
                request_timeout_s=30.0,
            )
            host = EdgeHost(ecfg, running).start()
            hosts.append(host)
            ups.append(start_updater(host))
        wait_for(
            lambda: all(h.states and h.states[-1].state == "active" for h in hosts), 120, "boxes settled"
        )

        t0 = time.monotonic()
        ch.approve("2.0.0", "staging", "bench", "benchmark")
        ch.rollout("2.0.0", "staging", "bench", "benchmark")
        wait_for(
            lambda: all(getattr(h.model_slot.current, "version", None) == "2.0.0" for h in hosts),
            1800,
            "N/N active",
            step=0.02,
        )
        wait_for(lambda: ch.status("staging").groups["staging"].active == n, 60, "cloud sees N/N")
        elapsed = time.monotonic() - t0

        # transfer: one box, the whole package over MQTT, against the disk
        sha = ch.repo.builds()["2.0.0"].hashes["sha256"]
        blob = ch.repo.blob_path(sha)
        size = blob.stat().st_size
        channel = ups[0].updater.channel  # type: ignore[union-attr]
        part = work / "bench.part"
        t1 = time.perf_counter()
        download_resumable(channel, group_download_path("staging", sha), part, size, chunk, 30.0, 120.0)
        mqtt_s = time.perf_counter() - t1
        assert part.stat().st_size == size
        t2 = time.perf_counter()
        with blob.open("rb") as fh:
            while fh.read(chunk):
                pass
        disk_s = max(time.perf_counter() - t2, 1e-9)
        mb = size / 1e6
        print(f"package: {mb:.1f} MB, chunk {args.chunk_kib} KiB, {n} devices")
        print(
            f"approval -> {n}/{n} active: {elapsed:.1f} s (goal {GOAL_S:.0f} s, ratio {elapsed / GOAL_S:.2f})"
        )
        print(f"fleet transfer: {mb * n / elapsed:.1f} MB/s aggregate during the rollout")
        print(
            f"transfer over MQTT: {mb / mqtt_s:.1f} MB/s; disk read: {mb / disk_s:.0f} MB/s "
            f"(MQTT is {disk_s / mqtt_s:.4f} x disk speed; package takes {mqtt_s:.2f} s vs {disk_s:.3f} s)"
        )
        return 0
    finally:
        for u in ups:
            u.stop()
        for h in hosts:
            h.stop()
        if svc is not None:
            svc.stop()
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

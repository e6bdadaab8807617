"""Lineage: from one prediction (or a model version) back to everything that produced it.

prediction → device, camera, time → model version → training run and its parameters →
dataset version and its files → code commit → approvals and rollouts → audit entries.
Every hop reads the owning domain's store; a hop whose store is missing is reported in
``missing`` instead of failing the whole answer, so lineage works on a partial install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloud.fleet.store import FleetStore
from shared.errors import ParkwatchError

if TYPE_CHECKING:
    from cloud.config import CloudConfig

MAX_FILES = 10_000


def _dump(x: Any) -> Any:
    if hasattr(x, "model_dump"):
        return x.model_dump()
    if hasattr(x, "to_dict"):
        return x.to_dict()
    return x


def model_lineage(cfg: CloudConfig, version: str, with_files: bool = True) -> dict[str, Any]:
    from cloud.registry.store import Registry

    out: dict[str, Any] = {"model_version": version, "missing": []}
    with Registry(cfg.registry_db) as reg:
        m = reg.get_model(version)
        metrics = {k: v for k, v in m.metrics.items() if k != "baseline"}
        out["model"] = {
            "version": m.version,
            "stage": m.stage,
            "gate_passed": m.gate_passed,
            "gate": m.gate,
            "metrics": metrics,
            "package_dir": m.package_dir,
            "tarball_sha256": m.tarball_sha256,
            "created_at": m.created_at,
        }
        lin = m.lineage or {}
        out["code"] = {
            k: lin.get(k)
            for k in ("code_commit", "commit", "dirty", "code_dirty", "packages", "package_versions")
            if k in lin
        }
        out["parameters"] = lin.get("parameters")
        out["lineage"] = lin
        if m.run_id:
            try:
                run = reg.get_run(m.run_id)
                out["training_run"] = _dump(run)
                out["trials"] = [_dump(t) for t in reg.list_trials(m.run_id)]
            except ParkwatchError as e:
                out["missing"].append(f"training run {m.run_id}: {e}")
        dataset_id = m.dataset_id or lin.get("dataset_version")
        if dataset_id:
            try:
                out["dataset"] = _dump(reg.get_dataset(dataset_id))
                if with_files:
                    files = reg.dataset_files(dataset_id)
                    out["dataset"]["files"] = [_dump(f) for f in files[:MAX_FILES]]
                    out["dataset"]["files_truncated"] = len(files) > MAX_FILES
            except ParkwatchError as e:
                out["missing"].append(f"dataset {dataset_id}: {e}")
        try:
            from cloud.registry.approvals import history

            out["approvals"] = [_dump(d) for d in history(reg, version)]
        except (ImportError, ParkwatchError) as e:
            out["missing"].append(f"approvals: {e}")
        try:
            from cloud.release.store import RolloutTable

            out["rollouts"] = [
                r.to_dict() for r in RolloutTable(reg).history(limit=1000) if r.version == version
            ]
        except (ImportError, ParkwatchError) as e:
            out["missing"].append(f"rollouts: {e}")
        try:
            out["audit"] = [e.to_dict() for e in reg.audit.entries(subject=f"model:{version}")]
        except (AttributeError, ParkwatchError) as e:
            out["missing"].append(f"audit: {e}")
    return out


def lineage(cfg: CloudConfig, ref: str, with_files: bool = True) -> dict[str, Any]:
    """``ref`` is a prediction id (``DEVICE:SEQ``) or a model version."""
    if ":" in ref:
        with FleetStore(cfg.fleet_db) as fs:
            p = fs.prediction(ref)
            try:
                dev = fs.device(p["device"])
            except ParkwatchError:
                dev = {}
            fb = [
                f
                for f in fs.feedback(model_version=p["model_version"])
                if f["device"] == p["device"] and f["seq"] == p["seq"]
            ]
        out = {
            "prediction": {
                k: p[k]
                for k in (
                    "id",
                    "device",
                    "seq",
                    "site",
                    "camera",
                    "ts",
                    "label",
                    "confidence",
                    "probs",
                    "abstain",
                    "flags",
                    "snapshot",
                    "model_version",
                    "received_ts",
                )
            },
            "device": {k: dev.get(k) for k in ("device", "site", "grp", "software", "model_version")},
            "feedback": fb[0] if fb else None,
        }
        out.update(model_lineage(cfg, p["model_version"], with_files))
        return out
    return model_lineage(cfg, ref, with_files)

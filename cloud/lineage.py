"""Lineage: from one prediction (or a model version) back to everything that produced it.

prediction → device, camera, time → model version → training run and its parameters →
dataset version and its files → code commit → approvals and rollouts → audit entries.
Every hop reads the owning domain's store; a hop that cannot be followed (its store is missing,
its record is not there, or the record before it names none) is reported in ``missing`` instead
of failing the whole answer, so lineage works on a partial install. Only the thing asked about
must exist: an unknown prediction id, or a model version asked for by name that is not
registered, is an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloud.fleet.outcomes import mode_of, outcome
from cloud.fleet.records import Device
from cloud.fleet.store import FleetStore
from cloud.packaging.lineage import ModelLineage
from shared.errors import ParkwatchError

if TYPE_CHECKING:
    from cloud.config import CloudConfig
    from cloud.registry.store import Registry

MAX_FILES = 10_000
# What hangs off a model version's registry record, reported missing when the record is.
_FROM_MODEL = ("training run", "parameters", "dataset", "code commit")


def _dump(x: Any) -> Any:
    if hasattr(x, "model_dump"):
        return x.model_dump()
    if hasattr(x, "to_dict"):
        return x.to_dict()
    return x


def _model_record(reg: Registry, version: str, with_files: bool, out: dict[str, Any]) -> None:
    """The registry record of ``version`` and what it points to, into ``out`` (raises if absent)."""
    m = reg.get_model(version)
    missing: list[str] = out["missing"]
    out["model"] = {
        "version": m.version,
        "stage": m.stage,
        "gate_passed": m.gate_passed,
        "gate": m.gate,
        "metrics": {k: v for k, v in m.metrics.items() if k != "baseline"},
        "package_dir": m.package_dir,
        "tarball_sha256": m.tarball_sha256,
        "created_at": m.created_at,
    }
    lin = m.lineage or {}
    recorded = ModelLineage.read(lin)
    out["code"] = recorded.code
    out["parameters"] = recorded.parameters
    out["lineage"] = lin
    run_id = m.run_id or recorded.run_id
    if run_id:
        try:
            out["training_run"] = _dump(reg.get_run(run_id))
            out["trials"] = [_dump(t) for t in reg.list_trials(run_id)]
        except ParkwatchError as e:
            missing.append(f"training run {run_id}: {e}")
    else:
        missing.append(f"training run: model version {version} records none")
    if out["parameters"] is None:
        missing.append(f"parameters: model version {version} records none")
    dataset_id = m.dataset_id or recorded.dataset_version
    if dataset_id:
        try:
            out["dataset"] = _dump(reg.get_dataset(dataset_id))
            if with_files:
                files = reg.dataset_files(dataset_id)
                out["dataset"]["files"] = [_dump(f) for f in files[:MAX_FILES]]
                out["dataset"]["files_truncated"] = len(files) > MAX_FILES
        except ParkwatchError as e:
            missing.append(f"dataset {dataset_id}: {e}")
    else:
        missing.append(f"dataset: model version {version} records none")
    if not recorded.commit:
        missing.append(f"code commit: model version {version} records none")


def _by_version(reg: Registry, version: str, out: dict[str, Any]) -> None:
    """Approvals, rollouts and audit entries, looked up by the version string alone."""
    missing: list[str] = out["missing"]
    try:
        from cloud.registry.approvals import history

        out["approvals"] = [_dump(d) for d in history(reg, version)]
    except (ImportError, ParkwatchError) as e:
        missing.append(f"approvals: {e}")
    try:
        from cloud.release.store import RolloutTable

        out["rollouts"] = [r.to_dict() for r in RolloutTable(reg).history(limit=1000) if r.version == version]
    except (ImportError, ParkwatchError) as e:
        missing.append(f"rollouts: {e}")
    try:
        out["audit"] = [e.to_dict() for e in reg.audit.entries(subject=f"model:{version}")]
    except (AttributeError, ParkwatchError) as e:
        missing.append(f"audit: {e}")


def model_lineage(
    cfg: CloudConfig, version: str, with_files: bool = True, *, must_exist: bool = True
) -> dict[str, Any]:
    """Lineage of a model version. With ``must_exist`` (a version asked for by name) an
    unregistered version is an error; without it (reached from a prediction) the model and
    everything that hangs off it are listed in ``missing`` and the rest is still answered."""
    from cloud.registry.errors import NotFoundError
    from cloud.registry.store import Registry

    out: dict[str, Any] = {"model_version": version, "missing": []}
    try:
        reg = Registry(cfg.paths.registry_db)
    except ParkwatchError as e:
        if must_exist:
            raise
        out["missing"] += [f"model version {version}: {e}"]
        out["missing"] += [f"{what}: the registry cannot be read" for what in _FROM_MODEL]
        return out
    with reg:
        try:
            _model_record(reg, version, with_files, out)
        except NotFoundError as e:
            if must_exist:
                raise
            out["missing"].append(f"model version {version}: {e}")
            out["missing"] += [f"{what}: model version {version} is not registered" for what in _FROM_MODEL]
        _by_version(reg, version, out)
    return out


def lineage(cfg: CloudConfig, ref: str, with_files: bool = True) -> dict[str, Any]:
    """``ref`` is a prediction id (``DEVICE:SEQ``) or a model version."""
    if ":" not in ref:
        return model_lineage(cfg, ref, with_files)
    missing: list[str] = []
    with FleetStore(cfg.fleet_store) as fs:
        p = fs.prediction(ref)
        dev: Device | None
        try:
            dev = fs.device(p.device)
        except ParkwatchError as e:
            dev = None
            missing.append(f"device {p.device}: {e}")
        fb = [
            f for f in fs.feedback(model_version=p.model_version) if f.device == p.device and f.seq == p.seq
        ]
    pred = p.to_dict()
    out: dict[str, Any] = {
        "prediction": {
            k: pred[k]
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
                "regions",  # where in the frame the pet was: [{box: [x, y, w, h], label, confidence}]
                "ir",  # 1 an IR (night) frame, 0 a day frame, None: the box did not say
            )
        },
        "device": {
            "device": dev.device if dev else None,
            "site": dev.site if dev else None,
            "software": dev.software if dev else None,
            "model_version": dev.model_version if dev else None,
            "grp": _provisioned_group(cfg, p.site, p.device),
        },
        "feedback": fb[0].to_dict() if fb else None,
    }
    out["prediction"]["outcome"] = outcome(p.label, p.abstain)
    out["prediction"]["lighting"] = mode_of(p.ir)
    model = model_lineage(cfg, p.model_version, with_files, must_exist=False)
    model["missing"] = missing + model["missing"]
    out.update(model)
    return out


def _provisioned_group(cfg: CloudConfig, site: str, device: str) -> str | None:
    """The device's group as provisioned (``devices add``): the one owner of membership."""
    from cloud.release.store import read_membership

    return read_membership(cfg.paths).get(f"{site}/{device}")

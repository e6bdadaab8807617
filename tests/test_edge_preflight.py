"""`edge config check`'s preflight on the file a newcomer writes by hand."""

from __future__ import annotations

from pathlib import Path

from edge.config import load, preflight


def _config(tmp_path: Path, initial: Path) -> Path:
    toml = tmp_path / "edge.toml"
    toml.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[device]\nid = "walkbox1"\nsite = "walkpark"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = 1883\n[[cameras]]\nid = "photos"\nkind = "folder"\n'
        f'url = "{tmp_path}"\n[model]\ninitial = "{initial}"\n[status_page]\nenabled = false\n'
    )
    return toml


def test_model_initial_naming_the_folder_above_the_package_is_warned(tmp_path: Path) -> None:
    """`cloud baseline OUT` builds OUT/VERSION; config check said ok for `initial = OUT` and the
    box then started without a model."""
    out = tmp_path / "baseline"
    pkg = out / "baseline-imagenet-grouped"
    pkg.mkdir(parents=True)
    (pkg / "model.onnx").write_bytes(b"not checked here")
    path = _config(tmp_path, out)
    warnings = preflight(load(path), path)
    assert any("not a model package" in w and str(pkg) in w for w in warnings), warnings
    ok = _config(tmp_path, pkg)
    assert not any("model.initial" in w for w in preflight(load(ok), ok))

"""ONNX export with metadata, and the numeric parity check against torch.

The legacy TorchScript exporter is used on purpose: on this torch it exports EfficientNet-Lite0
at opset 17 in a few seconds with a max difference around 5e-6, with no extra dependencies.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import torch
from torch import nn

from cloud.packaging.errors import PackagingError, ParityError
from shared.atomic import atomic_write_bytes
from shared.modelpkg import ModelMetadata

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
SCORE_NAME = "pet_score"  # optional second output (shared.modelpkg.PET_SCORE_OUTPUT)
PARITY_TOLERANCE = 1e-4


def _export_proto(model: nn.Module, example: torch.Tensor, output_name: str | list[str]) -> onnx.ModelProto:
    model.eval()
    names = [output_name] if isinstance(output_name, str) else list(output_name)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                buf,  # type: ignore[arg-type]
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in names}},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as e:  # the exporter raises many unrelated types
        raise PackagingError(f"ONNX export failed: {e}") from e
    return onnx.load_from_string(buf.getvalue())


def export_graph(model: nn.Module, path: Path, example: torch.Tensor, output_name: str) -> None:
    """A plain export (no parkwatch metadata), e.g. the frozen backbone used for feature extraction."""
    atomic_write_bytes(path, _export_proto(model, example, output_name).SerializeToString())


def export_onnx(model: nn.Module, path: Path, metadata: ModelMetadata, example: torch.Tensor) -> None:
    """Export ``model`` (emitting probabilities, and the pet score when it returns two outputs)
    with a dynamic batch axis and our metadata_props."""
    with torch.no_grad():
        two = isinstance(model.eval()(example), tuple)
    proto = _export_proto(model, example, [OUTPUT_NAME, SCORE_NAME] if two else OUTPUT_NAME)
    for key, value in metadata.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "parkwatch"
    proto.doc_string = f"parkwatch model {metadata.model_version}: labels {list(metadata.labels)}"
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise PackagingError(f"exported ONNX graph is invalid: {e}") from e
    atomic_write_bytes(path, proto.SerializeToString())


def ort_session(path: Path, threads: int = 0) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def output_names(session: object) -> list[str]:
    return [o.name for o in session.get_outputs()]  # type: ignore[attr-defined]


def run_onnx(
    session: object, batch: npt.NDArray[np.float32], chunk: int = 32, output: str = OUTPUT_NAME
) -> npt.NDArray[np.float32]:
    outs = [
        session.run([output], {INPUT_NAME: batch[i : i + chunk]})[0]  # type: ignore[attr-defined]
        for i in range(0, len(batch), chunk)
    ]
    return np.concatenate(outs).astype(np.float32)


def run_torch_all(
    model: nn.Module, batch: npt.NDArray[np.float32], chunk: int = 32
) -> list[npt.NDArray[np.float32]]:
    """Every output of ``model`` (probabilities first), concatenated over chunks."""
    model.eval()
    parts: list[list[npt.NDArray[np.float32]]] = []
    with torch.no_grad():
        for i in range(0, len(batch), chunk):
            out = model(torch.from_numpy(batch[i : i + chunk]))
            outs = out if isinstance(out, tuple) else (out,)
            parts.append([o.numpy() for o in outs])
    return [np.concatenate([p[k] for p in parts]).astype(np.float32) for k in range(len(parts[0]))]


def run_torch(model: nn.Module, batch: npt.NDArray[np.float32], chunk: int = 32) -> npt.NDArray[np.float32]:
    return run_torch_all(model, batch, chunk)[0]


def parity(
    model: nn.Module, onnx_path: Path, batch: npt.NDArray[np.float32], tolerance: float = PARITY_TOLERANCE
) -> float:
    """Max abs difference of torch and ONNX Runtime outputs (probabilities, pet score) on ``batch``;
    raises above tolerance."""
    wants = run_torch_all(model, batch)
    sess = ort_session(onnx_path)
    names = output_names(sess)
    if len(names) != len(wants):
        raise ParityError(f"torch gives {len(wants)} outputs, the ONNX file {len(names)}: {names}")
    diff = max(
        float(np.max(np.abs(want - run_onnx(sess, batch, output=name))))
        for want, name in zip(wants, names, strict=True)
    )
    if not diff <= tolerance:
        raise ParityError(
            f"ONNX output differs from torch by {diff:.2e} (> {tolerance:.0e}); "
            "the export is wrong, do not ship it"
        )
    return diff

"""Check a model before install-edge.sh lets it replace the box's working one.

Run with the *installed* edge venv's Python (``/opt/parkwatch/venv/bin/python``), so the model is
judged by exactly the code that will run it: the package's manifest digests, the ONNX file
loading in ONNX Runtime with its ``parkwatch.*`` metadata, and one blank frame classified.

Prints one line and exits 0 (usable) or 1 (not usable, with the reason): the installer swaps
the model in only after a 0, so a bad ``--model`` never costs the box the model it had.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: check_model.py PACKAGE_DIR_OR_ONNX", file=sys.stderr)
        return 64
    path = argv[1]
    try:
        import numpy as np

        from edge.errors import ModelError
        from edge.model import load_model
    except Exception as e:  # a broken venv is reported, not dumped
        print(f"cannot load the edge software to check the model: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    try:
        model = load_model(path)
        h, w = model.spec.input_size
        probs = model.classify([np.zeros((h, w, 3), dtype=np.uint8)])
        if probs.shape != (1, len(model.labels)):
            raise ModelError(
                f"the model answered shape {probs.shape} for one frame, not (1, {len(model.labels)})"
            )
    except ModelError as e:
        print(str(e).replace("\n", " "), file=sys.stderr)
        return 1
    except Exception as e:  # ONNX Runtime raises untyped errors when a valid-looking model cannot run
        print(f"{path}: the model cannot run: {type(e).__name__}: {e}".replace("\n", " "), file=sys.stderr)
        return 1
    labels = ", ".join(model.labels)
    print(f"model {model.version} loads and runs (labels {labels}; {model.verification})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

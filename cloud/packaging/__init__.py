"""ONNX export with parity check, metadata, golden samples, model card, lineage, tarball."""

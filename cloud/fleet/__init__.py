"""Fleet ingest: lossless, idempotent storage of what devices stream."""

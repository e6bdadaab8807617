"""The registry: datasets, runs, model versions, stages, approvals, and the audit log."""

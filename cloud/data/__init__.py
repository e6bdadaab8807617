"""Data-lake ingestion: validation, quarantine, de-duplication, split, dataset versions."""

"""Test-split metrics, reports and the promotion gate."""

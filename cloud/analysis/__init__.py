"""Device health, drift and performance analysis."""

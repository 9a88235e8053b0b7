"""kcv.metrics."""

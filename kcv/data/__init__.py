"""kcv.data."""

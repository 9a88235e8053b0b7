"""kcv.utils."""

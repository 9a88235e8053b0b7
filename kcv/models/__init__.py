"""kcv.models."""

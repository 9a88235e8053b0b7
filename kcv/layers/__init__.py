"""kcv.layers."""

"""kcv.training."""

"""kcv.losses."""

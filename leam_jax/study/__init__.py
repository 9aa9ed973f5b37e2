"""The study behind ``python -m leam_jax.main``: inputs, the resumable sharded sweep,
per-shard device work, tables, figures and the report."""

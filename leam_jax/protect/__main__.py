"""python -m leam_jax.protect: LEAM-guided privacy protection of photos, driven by absl flags.

Flags are generated from :class:`leam_jax.protect.config.ProtectConfig` (defaults and help live
there); :func:`leam_jax.protect.job.run` takes the explicit config.
"""

from __future__ import annotations

from absl import app

from leam_jax import cli_flags
from leam_jax.protect.config import ProtectConfig
from leam_jax.protect.job import run

cli_flags.define_flags(ProtectConfig)


def main(argv: list[str]) -> int:
    cli_flags.no_arguments(argv)
    return cli_flags.run_job("leam_jax.protect", ProtectConfig, run)


if __name__ == "__main__":
    app.run(main)

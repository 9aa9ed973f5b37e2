"""python -m leam_jax.main: the LEAM study, driven by absl flags.

With no flags it runs the whole analysis on the sample photos shipped in a
registry package, with every default model, and prints where the report is.
Flags are read only here and are generated from the fields of
:class:`leam_jax.study.config.StudyConfig` (defaults and help live there);
``leam_jax.study.job.run`` takes the explicit config.
"""

from __future__ import annotations

import sys

from absl import app

from leam_jax import cli_flags
from leam_jax.cli_flags import FLAGS, define_flags, flag_fields, flag_name
from leam_jax.study.config import StudyConfig
from leam_jax.study.job import run

define_flags()


def main(argv: list[str]) -> int:
    cli_flags.no_arguments(argv)
    return cli_flags.run_job("leam_jax", StudyConfig, run)


def cli() -> None:
    """The ``leam-jax`` console script: the same as ``python -m leam_jax.main``."""
    for f in flag_fields():  # --help lists the main module's key flags; here that is the script
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[flag_name(f)])
    app.run(main)


if __name__ == "__main__":
    cli()

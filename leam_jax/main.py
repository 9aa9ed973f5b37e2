"""python -m leam_jax.main: the LEAM study, driven by absl flags.

With no flags it runs the whole analysis on the sample photos shipped in a
registry package, with every default model, and prints where the report is.
Flags are read only here and are generated from the fields of
:class:`leam_jax.study.config.StudyConfig` (defaults and help live there);
``leam_jax.study.job.run`` takes the explicit config.
"""

from __future__ import annotations

import sys

from absl import app, logging

from leam_jax.cli_flags import EXPECTED_ERRORS, FLAGS, config_from_flags, define_flags, flag_fields, flag_name
from leam_jax.study.job import run

define_flags()


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file at INFO
    try:
        config = config_from_flags()
        summary = run(config, log=lambda msg: print(msg, file=sys.stderr))
    except EXPECTED_ERRORS as e:
        print(f"leam_jax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nleam_jax: interrupted; finished shards are kept: run the same command with --resume "
              f"to continue in {FLAGS['output_dir'].value}", file=sys.stderr)
        return 130
    print(summary.get("report", ""))
    return 0


def cli() -> None:
    """The ``leam-jax`` console script: the same as ``python -m leam_jax.main``."""
    for f in flag_fields():  # --help lists the main module's key flags; here that is the script
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[flag_name(f)])
    app.run(main)


if __name__ == "__main__":
    cli()

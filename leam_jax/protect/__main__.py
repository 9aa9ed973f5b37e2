"""python -m leam_jax.protect: LEAM-guided privacy protection of photos, driven by absl flags.

Flags are generated from :class:`leam_jax.protect.config.ProtectConfig` (defaults and help live
there); :func:`leam_jax.protect.job.run` takes the explicit config.
"""

from __future__ import annotations

import sys

from absl import app, logging

from leam_jax import cli_flags
from leam_jax.protect.config import ProtectConfig
from leam_jax.protect.job import run

cli_flags.define_flags(ProtectConfig)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not cli_flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        summary = run(cli_flags.config_from_flags(ProtectConfig), log=lambda msg: print(msg, file=sys.stderr))
    except cli_flags.EXPECTED_ERRORS as e:
        print(f"leam_jax.protect: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nleam_jax.protect: interrupted; finished shards are kept: run the same command with --resume "
              f"to continue in {cli_flags.FLAGS['output_dir'].value}", file=sys.stderr)
        return 130
    print(summary.get("report", ""))
    return 0


if __name__ == "__main__":
    app.run(main)

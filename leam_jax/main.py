"""python -m leam_jax.main: the LEAM study, driven by absl flags.

With no flags it runs the whole analysis on the sample photos shipped in a
registry package, with every default model, and prints where the report is.
Flags are read only here and are generated from the fields of
:class:`leam_jax.study.config.StudyConfig` (defaults and help live there);
``leam_jax.study.job.run`` takes the explicit config.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

from absl import app, flags, logging

from leam_jax import weights
from leam_jax.study import sweep
from leam_jax.study.config import StudyConfig
from leam_jax.study.job import run

FLAGS = flags.FLAGS
# Errors a user can meet and act on: one line, exit code 2 (anything else is a bug: a traceback).
EXPECTED_ERRORS = (ValueError, OSError, sweep.SweepError, weights.WeightsError)
_TYPES = typing.get_type_hints(StudyConfig)


def _flag_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(StudyConfig) if f.metadata.get("flag") is not None]


def _flag_name(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or f.name


def define_flags() -> None:
    """One absl flag per :class:`StudyConfig` field that has one, with its default and help."""
    for f in _flag_fields():
        name, kind, help_ = _flag_name(f), _TYPES[f.name], f.metadata["help"]
        if f.metadata.get("choices"):
            flags.DEFINE_enum(name, f.default, list(f.metadata["choices"]), help_)
        elif typing.get_origin(kind) is tuple:
            flags.DEFINE_list(name, [f"{v:g}" if isinstance(v, float) else v for v in f.default], help_)
        elif kind is bool:
            flags.DEFINE_bool(name, f.default, help_)
        elif kind is int:
            flags.DEFINE_integer(name, f.default, help_)
        elif kind is float:
            flags.DEFINE_float(name, f.default, help_)
        else:  # str, str | None, Path
            flags.DEFINE_string(name, None if f.default is None else str(f.default), help_)


def _value(f: dataclasses.Field, raw):
    kind = _TYPES[f.name]
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        try:
            return tuple(item(v) for v in raw)
        except ValueError as e:
            raise ValueError(f"--{_flag_name(f)}: {e}") from e
    if kind is Path:
        return Path(raw)
    return raw


def config_from_flags() -> StudyConfig:
    return StudyConfig(**{f.name: _value(f, FLAGS[_flag_name(f)].value) for f in _flag_fields()})


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
    for f in _flag_fields():  # --help lists the main module's key flags; here that is the script
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[_flag_name(f)])
    app.run(main)


if __name__ == "__main__":
    cli()

"""absl flags generated from a config dataclass's fields (defaults and help live on the fields).

Shared by ``python -m leam_jax.main`` (:class:`~leam_jax.study.config.StudyConfig`) and
``python -m leam_jax.protect`` (:class:`~leam_jax.protect.config.ProtectConfig`); importing this
module defines no flag.
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

FLAGS = flags.FLAGS
# Errors a user can meet and act on: one line, exit code 2 (anything else is a bug: a traceback).
EXPECTED_ERRORS = (ValueError, OSError, sweep.SweepError, weights.WeightsError)


def flag_fields(cls=StudyConfig) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("flag") is not None]


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or f.name


def define_flags(cls=StudyConfig) -> None:
    """One absl flag per field of a config dataclass (:class:`StudyConfig` by default) that has one,
    with its default and help."""
    types = typing.get_type_hints(cls)
    for f in flag_fields(cls):
        name, kind, help_ = flag_name(f), types[f.name], f.metadata["help"]
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


def _value(f: dataclasses.Field, raw, types):
    kind = types[f.name]
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        try:
            return tuple(item(v) for v in raw)
        except ValueError as e:
            raise ValueError(f"--{flag_name(f)}: {e}") from e
    if kind is Path:
        return Path(raw)
    return raw


def config_from_flags(cls=StudyConfig):
    types = typing.get_type_hints(cls)
    return cls(**{f.name: _value(f, FLAGS[flag_name(f)].value, types) for f in flag_fields(cls)})




def run_job(prog: str, config_cls, run) -> int:
    """A CLI's body: the config from the flags, ``run(config, log)``, the report's path on stdout.
    Expected errors: one line and exit code 2; Ctrl-C: 130 and how to resume."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file at INFO
    try:
        summary = run(config_from_flags(config_cls), log=lambda msg: print(msg, file=sys.stderr))
    except EXPECTED_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; finished shards are kept: run the same command with --resume "
              f"to continue in {FLAGS['output_dir'].value}", file=sys.stderr)
        return 130
    print(summary.get("report", ""))
    return 0


def no_arguments(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")

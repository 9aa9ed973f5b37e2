"""python -m leam_jax.main: the batch job, driven by absl flags.

Flags are read only here; ``run()`` takes an explicit config so the job is
importable and testable. For now the job loads each model (converting its
weights on first use), embeds the pre-aligned faces of ``--data_dir`` in
fixed-shape jitted batches and reports same/different-person verification;
LEAM maps and statistics join as later issues land.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging

from leam_jax.job import DEFAULT_DATA_DIR, JobConfig, run

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["dlib_resnet"], "Registry models to run (see leam_jax.models.REGISTRY).")
flags.DEFINE_string(
    "data_dir", None,
    "Folder with one sub-folder per person holding pre-aligned square face chips. "
    f"Default: the development set {DEFAULT_DATA_DIR} when present, else a built-in noise smoke test.",
)
flags.DEFINE_string("output_dir", "runs/default", "Where embeddings, summary.json and failures.csv are written.")
flags.DEFINE_integer("batch_size", 32, "Fixed batch shape; the last batch is padded and masked.")
flags.DEFINE_integer("max_people", 0, "Use at most this many people (0 = all).")
flags.DEFINE_integer("max_images_per_person", 0, "Use at most this many images per person (0 = all).")
flags.DEFINE_integer("seed", 0, "Seed for anything random (the smoke-test inputs).")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file at INFO
    config = JobConfig(
        models=tuple(FLAGS.models),
        data_dir=FLAGS.data_dir,
        output_dir=Path(FLAGS.output_dir),
        batch_size=FLAGS.batch_size,
        max_people=FLAGS.max_people,
        max_images_per_person=FLAGS.max_images_per_person,
        seed=FLAGS.seed,
    )
    summary = run(config, log=lambda msg: print(msg, file=sys.stderr))
    print(summary["report"])
    return 0


if __name__ == "__main__":
    app.run(main)

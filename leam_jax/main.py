"""python -m leam_jax.main: the LEAM study, driven by absl flags.

With no flags it runs the whole analysis on the sample photos shipped in a
registry package, with every default model, and prints where the report is.
Flags are read only here; ``leam_jax.study.job.run`` takes an explicit config.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging

from leam_jax import core, stats
from leam_jax.study import sweep
from leam_jax.study.job import DEFAULT_MODELS, JobConfig, run

FLAGS = flags.FLAGS
flags.DEFINE_list("models", list(DEFAULT_MODELS),
                  "Registry models to explain (leam_jax.models.REGISTRY). Default: every real model that verifies.")
flags.DEFINE_string("data_dir", None, "Folder with one sub-folder per person (LFW / VGGFace2 / CelebA-by-identity "
                    "layout). Default (and no --manifest): the built-in sample photos, every face its own id.")
flags.DEFINE_string("manifest", None, "CSV with columns path, person and any attribute columns (e.g. gender); "
                    "every statistic is also broken down by each attribute. Relative paths: from the CSV's folder.")
flags.DEFINE_list("group_by", [], "Manifest columns to break every statistic down by (default: each attribute "
                  "column with at most 20 distinct values).")
flags.DEFINE_bool("aligned", False, "Inputs are pre-aligned face chips (e.g. LFW-aligned): skip the detector, "
                  "fit the mesh to the whole chip.")
flags.DEFINE_string("output_dir", "runs/default", "Where shards, tables/, figures/, report.html, summary.json and "
                    "failures.csv go.")
flags.DEFINE_enum("target", "identity", ["identity", "self"], "Score explained: identity = cosine to the "
                  "leave-one-out mean of the person's other faces (self for a person with one face); self = the "
                  "embedding's length along its own direction.")
flags.DEFINE_list("weighting", list(core.WEIGHTINGS), f"Layer weightings to run, any of {list(core.WEIGHTINGS)}; "
                  "every table reports each side by side.")
flags.DEFINE_list("taps", [], "Layers to use: tap names (for every model that has them) or model/tap. Default: all.")
flags.DEFINE_list("top_percent", ["1", "5", "10"], "Top-p% of each map whose region shares are reported.")
flags.DEFINE_list("occlusion_fill", [stats.DEFAULT_FILL], f"Fills for occlusion, any of {list(stats.FILLS)}; "
                  "the first is used for the transfer matrix and the headline.")
flags.DEFINE_list("occlusion_percents", ["0.5", "1", "2", "5", "10"],
                  "Percents of pixels occluded (LEAM top pixels, the baselines' top pixels, random pixels).")
flags.DEFINE_integer("random_seeds", 3, "Random-pixel draws averaged for the matched random baseline.")
flags.DEFINE_float("transfer_percent", 1.0, "Percent of top pixels of model A occluded on model B (A x B matrix).")
flags.DEFINE_integer("batch_size", 32, "Fixed batch shape (a multiple of the device count); the last batch is "
                     "padded and masked, so nothing recompiles.")
flags.DEFINE_integer("shard_size", 64, "Images per result shard (people are never split); the unit of resume.")
flags.DEFINE_integer("max_people", 0, "Use at most this many people (0 = all).")
flags.DEFINE_integer("max_images_per_person", 0, "Use at most this many images per person (0 = all).")
flags.DEFINE_bool("resume", False, "Continue the run in --output_dir: verified shards are kept, the rest computed.")
flags.DEFINE_integer("seed", 0, "Seed for random baselines, noise fills and bootstrap intervals.")
flags.DEFINE_integer("loader_threads", 0, "Threads decoding, detecting, aligning and parsing ahead of the device "
                     "(0: one per CPU core).")
flags.DEFINE_integer("prefetch", 1, "Shards prepared ahead of the one on the device.")
flags.DEFINE_bool("report", True, "Write figures/ and report.html at the end.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: jax.distributed coordinator host:port. Each "
                    "process takes every num_processes-th shard; process 0 merges and writes the tables.")
flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
flags.DEFINE_integer("process_index", 0, "Multi-host: this process's index.")


def config_from_flags() -> JobConfig:
    return JobConfig(
        models=tuple(FLAGS.models), data_dir=FLAGS.data_dir, manifest=FLAGS.manifest, aligned=FLAGS.aligned,
        output_dir=Path(FLAGS.output_dir), target=FLAGS.target, weightings=tuple(FLAGS.weighting),
        taps=tuple(FLAGS.taps), group_by=tuple(FLAGS.group_by), top_percents=tuple(float(p) for p in FLAGS.top_percent),
        occlusion_fills=tuple(FLAGS.occlusion_fill),
        occlusion_percents=tuple(float(p) for p in FLAGS.occlusion_percents), random_seeds=FLAGS.random_seeds,
        transfer_percent=FLAGS.transfer_percent, batch_size=FLAGS.batch_size, shard_size=FLAGS.shard_size,
        max_people=FLAGS.max_people, max_images_per_person=FLAGS.max_images_per_person, resume=FLAGS.resume,
        seed=FLAGS.seed, loader_threads=FLAGS.loader_threads, prefetch=FLAGS.prefetch, report=FLAGS.report,
        coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
        process_index=FLAGS.process_index,
    )


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file at INFO
    try:
        config = config_from_flags()
        summary = run(config, log=lambda msg: print(msg, file=sys.stderr))
    except (ValueError, OSError, sweep.SweepError) as e:
        print(f"leam_jax: error: {e}", file=sys.stderr)
        return 2
    print(summary.get("report", ""))
    return 0


if __name__ == "__main__":
    app.run(main)

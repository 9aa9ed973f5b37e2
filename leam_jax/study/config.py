"""Every setting of a study in one place: its default, its help text, its check.

``python -m leam_jax.main`` generates its absl flags from these fields
(:mod:`leam_jax.main`), the job runs on a :class:`StudyConfig`, and the
per-shard device work gets the :class:`~leam_jax.study.compute.ComputeConfig`
derived from it, so a default is written once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from leam_jax import core, stats
from leam_jax.face import decode
from leam_jax.study.compute import ComputeConfig

# The real models that verify (benchmarks/zoo_verification.py); the default of --models.
DEFAULT_MODELS = ("dlib_resnet", "faceres", "faceres_deep", "mobileface")
# pair and contrast need a partner per image: API only. The gallery targets add an embedding pass.
SWEEP_TARGETS = ("identity", "self", "population", "identification")


def _opt(default, help: str, *, flag: str | None = "", choices: tuple[str, ...] | None = None):
    """A field with its flag's help; ``flag=None``: no command-line flag (API and tests only)."""
    meta = {"help": help, "flag": flag, "choices": choices}
    if isinstance(default, (tuple, list)):
        return dataclasses.field(default=tuple(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    models: tuple[str, ...] = _opt(DEFAULT_MODELS, "Registry models to explain (leam_jax.models.REGISTRY). "
                                   "Default: every real model that verifies.")
    data_dir: str | None = _opt(None, "Folder with one sub-folder per person (LFW / VGGFace2 / CelebA-by-identity "
                                "layout). Default (and no --manifest): the built-in sample photos, every face its own id.")
    manifest: str | None = _opt(None, "CSV with columns path, person and any attribute columns (e.g. gender); every "
                                "statistic is also broken down by each attribute. Relative paths: from the CSV's folder.")
    aligned: bool = _opt(False, "Inputs are pre-aligned face chips (e.g. LFW-aligned): skip the detector, fit the mesh "
                         "to the whole chip.")
    crops: bool = _opt(False, "Inputs are pre-cropped faces filling the frame (LFW-style crops, any roll, no "
                       "alignment assumed): skip the detector, fit the mesh starting from the whole image. Without "
                       "it, a photo where the detector finds no face is retried once with a black border.")
    output_dir: Path = _opt(Path("runs/default"), "Where shards, tables/, figures/, report.html, summary.json and "
                            "failures.csv go.")
    target: str = _opt(core.DEFAULT_TARGET, "Score explained (LEAM_SPEC section 1): identity = cosine to the leave-one-out "
                       "mean of the person's other faces; population = that minus the cosine to the mean of the other "
                       "people's references; identification = log-softmax over every person's reference; self = the "
                       "embedding's length along its own direction (and the fallback for a person with one face).",
                       choices=SWEEP_TARGETS)
    temperature: float = _opt(core.DEFAULT_TEMPERATURE, "identification's softmax temperature over cosines.")
    weightings: tuple[str, ...] = _opt(
        (core.DEFAULT_WEIGHTING, *(w for w in core.WEIGHTINGS if w != core.DEFAULT_WEIGHTING)),
        f"Layer weightings to run, any of {list(core.WEIGHTINGS)}; every table reports each side by side. The "
        "first is the run's default: the transfer matrix, the per-person views and the figures' first choice.",
        flag="weighting")
    taps: tuple[str, ...] = _opt((), "Layers to use: tap names (for every model that has them) or model/tap. "
                                 "Default: all.")
    group_by: tuple[str, ...] = _opt((), "Manifest columns to break every statistic down by (default: each attribute "
                                     "column with at most 20 distinct values).")
    top_percents: tuple[float, ...] = _opt((1.0, 5.0, 10.0), "Top-p% of each map whose region shares are reported.",
                                           flag="top_percent")
    occlusion_fills: tuple[str, ...] = _opt((stats.DEFAULT_FILL,), f"Fills for occlusion, any of {list(stats.FILLS)}; "
                                            "the first is used for the transfer matrix and the headline.",
                                            flag="occlusion_fill")
    occlusion_percents: tuple[float, ...] = _opt((0.5, 1.0, 2.0, 5.0, 10.0), "Percents of pixels occluded (LEAM top "
                                                 "pixels, the baselines' top pixels, random pixels).")
    random_seeds: int = _opt(3, "Random-pixel draws averaged for the matched random baseline.")
    sanity_faces: int = _opt(24, "Faces (whole people, seeded) for the cascading model-parameter randomisation "
                             "check; 0: skip it.")
    sanity_steps: int = _opt(8, "At most this many cascade steps (top k layers randomised; always 1, half, all).")
    pairs_within: str = _opt("auto", "Manifest column whose values group the same-person statistics' pairs (e.g. the "
                             "source set, so image style does not pass for identity). auto: the first of "
                             "source_repo, source, dataset, set that exists; none: all pairs.")
    transfer_percent: float = _opt(1.0, "Percent of top pixels of model A occluded on model B (A x B matrix); "
                                   "0: no transfer matrix.")
    batch_size: int = _opt(32, "Fixed batch shape (a multiple of the device count); the last batch is padded and "
                           "masked, so nothing recompiles.")
    shard_size: int = _opt(64, "Images per result shard (people are never split); the unit of resume.")
    max_people: int = _opt(0, "Use at most this many people (0 = all).")
    max_images_per_person: int = _opt(0, "Use at most this many images per person (0 = all).")
    resume: bool = _opt(False, "Continue the run in --output_dir: verified shards are kept, the rest computed.")
    seed: int = _opt(0, "Seed for random baselines, noise fills and bootstrap intervals.")
    max_image_pixels: int = _opt(decode.DEFAULT_MAX_PIXELS, "Largest image decoded, in pixels, read from the file's "
                                 "header before decoding (a larger one is rejected in failures.csv). The photos the "
                                 "loader works on hold at most this many decoded pixels together.")
    loader_threads: int = _opt(0, "Threads decoding, detecting, aligning and parsing ahead of the device "
                               "(0: one per CPU core).")
    prefetch: int = _opt(1, "Shards prepared ahead of the one on the device.")
    compile_cache: str = _opt("~/.cache/leam_jax/xla", "Folder of XLA's persistent compilation cache: a rerun, a resume "
                              "or another study of the same models and settings loads its compiled programs instead "
                              "of compiling them again (empty: off; a cache the environment set, "
                              "JAX_COMPILATION_CACHE_DIR, is kept).")
    report: bool = _opt(True, "Write figures/ and report.html at the end.")
    report_people: int = _opt(12, "People with a section of their own in the report (most images first).")
    report_faces: bool = _opt(False, "Draw per-person maps over the person's aligned face (re-read from the input "
                              "image at report time). Off by default: face pixels stay out of the report.")
    coordinator_address: str | None = _opt(None, "Multi-host: jax.distributed coordinator host:port. Each process "
                                           "takes every num_processes-th shard; process 0 merges and writes the tables.")
    num_processes: int = _opt(1, "Multi-host: number of processes.")
    process_index: int = _opt(0, "Multi-host: this process's index.")
    wait_timeout_s: float = _opt(24 * 3600.0, "Process 0 waits this long for the other processes' shards.", flag=None)
    stop_after_shards: int | None = _opt(None, "Tests: stop after this many shards, as a crash would.", flag=None)

    def validate(self) -> None:
        """Clear errors for settings that cannot run, before any slow work."""
        for name, values, allowed in (("weighting", self.weightings, core.WEIGHTINGS),
                                      ("occlusion fill", self.occlusion_fills, stats.FILLS)):
            for v in values:
                if v not in allowed:
                    raise ValueError(f"unknown {name} {v!r}; choose from {allowed}")
        if not self.weightings:
            raise ValueError("--weighting: give at least one weighting")
        if self.target not in SWEEP_TARGETS:
            raise ValueError(f"--target must be one of {SWEEP_TARGETS} for a sweep (pair/contrast: use the API), "
                             f"got {self.target!r}")
        for name, values in (("top_percent", self.top_percents), ("occlusion_percents", self.occlusion_percents)):
            bad = [p for p in values if not 0 < p <= 100]
            if bad or (name == "top_percent" and not values):
                raise ValueError(f"--{name}: percents must be in (0, 100], got {list(values)}")
        if not 0 <= self.transfer_percent <= 100:
            raise ValueError(f"--transfer_percent must be in [0, 100], got {self.transfer_percent}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be positive, got {self.temperature}")
        for name in ("sanity_faces", "report_people", "loader_threads", "prefetch", "max_people",
                     "max_images_per_person"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be at least 0, got {getattr(self, name)}")
        for name in ("batch_size", "shard_size", "random_seeds", "num_processes", "sanity_steps", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.process_index < self.num_processes:
            raise ValueError(f"--process_index must be in [0, {self.num_processes}), got {self.process_index}")
        if self.aligned and self.crops:
            raise ValueError("give --aligned (dlib-style aligned chips) or --crops (plain face crops), not both")
        if self.data_dir and self.manifest:
            raise ValueError("give --data_dir or --manifest, not both")

    def compute(self) -> ComputeConfig:
        """The device-side settings of the sweep."""
        return ComputeConfig(
            weightings=tuple(self.weightings), target=self.target, top_percents=tuple(self.top_percents),
            occlusion_percents=tuple(self.occlusion_percents), occlusion_fills=tuple(self.occlusion_fills),
            random_seeds=self.random_seeds, transfer_percent=self.transfer_percent, batch_size=self.batch_size,
            seed=self.seed, temperature=self.temperature)

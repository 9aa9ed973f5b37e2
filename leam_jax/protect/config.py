"""Every setting of a protection run: its default, its flag's help, its check (``python -m leam_jax.protect``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from leam_jax import core, protection
from leam_jax.face import decode
from leam_jax.protect.photos import MASK_KINDS
from leam_jax.study.config import DEFAULT_MODELS, SWEEP_TARGETS, _opt

TRANSFORMS = ("jpeg90", "jpeg75", "resize0.5", "blur1", "redetect")
# The leam masks' weighting. A mask is a use by occlusion, so it takes the weighting whose top pixels
# beat random pixels most under occlusion in the study's validity table (full ../shared/faces,
# leam_over_random_1: layercam 4.3 / 5.2 / 2.9 / 1.5x on the four default models, gradxact 4.2 / 4.9 /
# 2.4 / 1.8x, gradcam 1.1 / 1.5 / 0.7 / 0.2x), not the maps' default (gradcam, chosen for person
# specificity). BUILD.md, Decisions, Protection: the protection measured with each.
MASK_WEIGHTING = "layercam"


@dataclasses.dataclass(frozen=True)
class ProtectConfig:
    data_dir: str | None = _opt(None, "Folder with one sub-folder per person. Every photo is the clean data the "
                                "thresholds and references come from; --max_protected_per_person picks those protected.")
    manifest: str | None = _opt(None, "CSV with columns path and person (or identity); relative paths from its folder.")
    output_dir: Path = _opt(Path("runs/protect"), "Where protected/, shards, tables/, report.html and failures.csv go.")
    source_models: tuple[str, ...] = _opt(DEFAULT_MODELS, "Models the perturbation is optimised against (an "
                                          "ensemble: the sum of their scores).")
    eval_models: tuple[str, ...] = _opt(DEFAULT_MODELS, "Models every protected photo is measured on.")
    percents: tuple[float, ...] = _opt((1.0, 5.0, 10.0, 25.0), "Mask sizes p, percent of the face pixels (the "
                                       "analysis frame's footprint in the photo).", flag="percent")
    epsilons: tuple[float, ...] = _opt((4.0, 8.0, 16.0), "L_inf budgets on the 0..255 scale.", flag="epsilon")
    masks: tuple[str, ...] = _opt(MASK_KINDS, f"Mask kinds protected with the whole ensemble, any of {list(MASK_KINDS)}. "
                                  "leam (the source models' mean LEAM map: --target, --weighting) "
                                  "is the product; the others are baselines at the same pixel count.")
    transfer_masks: tuple[str, ...] = _opt(MASK_KINDS, "Mask kinds for the leave-one-model-out transfer (each source "
                                           "model left out in turn, measured on it); empty: no transfer.")
    target: str = _opt(core.DEFAULT_TARGET, "Target of the LEAM maps behind the leam masks (as the study's "
                       "--target).", choices=SWEEP_TARGETS)
    weighting: str = _opt(MASK_WEIGHTING, "Layer weighting of the LEAM maps behind the leam masks (default: the "
                          "one whose top pixels beat random pixels most under occlusion in the study).",
                          choices=core.WEIGHTINGS)
    steps: int = _opt(protection.DEFAULT_STEPS, "Optimisation steps.")
    floor: bool = _opt(False, "Each source model stops pulling once it is fooled with a margin (its score "
                       "--floor_margin impostor spreads below its threshold at FAR 1e-2, fitted on the clean photos): "
                       "the steps go to the models not yet fooled, and fooled photos change less. Off (the default): "
                       "every model is pushed as far as the budget allows, for transfer to unseen models.")
    floor_margin: float = _opt(1.0, "The floor's margin below the threshold, in standard deviations of the "
                               "model's clean impostor cosines.")
    optimizer: str = _opt("pgd", "pgd (signed gradient) or adam (optax).", choices=protection.OPTIMIZERS)
    eot: int = _opt(0, "Random views (shift, scale, blur, down-up resize) averaged per step; 0: none.")
    robust_percent: float = _opt(10.0, "The budget whose robustness (JPEG, resize, blur, re-detection) and "
                                 "protected-versus-protected figures are measured: p ...")
    robust_epsilon: float = _opt(8.0, "... and epsilon (a pair of --percent and --epsilon).")
    max_protected_per_person: int = _opt(0, "Protect at most this many photos per person (the first, in input order; "
                                         "0 = all). Every photo still serves as clean data.")
    max_protected_people: int = _opt(0, "Protect the photos of at most this many people (the first, in input order; "
                                     "0 = all). Every photo still serves as clean data.")
    max_people: int = _opt(0, "Use at most this many people (0 = all).")
    max_images_per_person: int = _opt(0, "Use at most this many images per person (0 = all).")
    jpeg: bool = _opt(False, "Also write each protected photo as JPEG (quality 95) beside the PNG. Figures are "
                      "measured on the PNG.")
    batch_size: int = _opt(4, "Photos per compiled protection call (a multiple of the device count).")
    shard_size: int = _opt(16, "Photos per result shard (people are never split); the unit of resume.")
    resume: bool = _opt(False, "Continue the run in --output_dir: verified shards are kept, the rest computed.")
    seed: int = _opt(0, "Seed of the random masks, the random views and the bootstrap intervals.")
    max_image_pixels: int = _opt(decode.DEFAULT_MAX_PIXELS, "Largest image decoded, in pixels (read from the header).")
    loader_threads: int = _opt(0, "Threads decoding and aligning ahead of the device (0: one per CPU core).")
    report: bool = _opt(True, "Write report.html at the end.")
    stop_after_shards: int | None = _opt(None, "Tests: stop after this many shards, as a crash would.", flag=None)

    def validate(self) -> None:
        """Clear errors for settings that cannot run, before any slow work."""
        if self.data_dir and self.manifest:
            raise ValueError("give --data_dir or --manifest, not both")
        if not (self.data_dir or self.manifest):
            raise ValueError("give --data_dir or --manifest: the photos to protect and the clean data")
        for name, values, allowed in (("masks", self.masks, MASK_KINDS), ("transfer_masks", self.transfer_masks,
                                                                          MASK_KINDS)):
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ValueError(f"--{name}: unknown mask kind(s) {bad}; choose from {list(MASK_KINDS)}")
        if "leam" not in self.masks:
            raise ValueError("--masks must include leam (the protected photos written are its)")
        if not self.source_models or not self.eval_models:
            raise ValueError("give at least one --source_models and one --eval_models")
        bad = [p for p in self.percents if not 0 < p <= 100]
        if bad or not self.percents:
            raise ValueError(f"--percent: percents must be in (0, 100], got {list(self.percents)}")
        bad = [e for e in self.epsilons if not 0 < e <= 255]
        if bad or not self.epsilons:
            raise ValueError(f"--epsilon: budgets must be in (0, 255] (0..255 scale), got {list(self.epsilons)}")
        if self.robust_percent not in self.percents or self.robust_epsilon not in self.epsilons:
            raise ValueError(f"--robust_percent {self.robust_percent:g} and --robust_epsilon {self.robust_epsilon:g} "
                             "must be among --percent and --epsilon")
        for name in ("steps", "batch_size", "shard_size", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.floor_margin < float("inf"):
            raise ValueError(f"--floor_margin must be finite and >= 0, got {self.floor_margin}")
        for name in ("eot", "max_protected_per_person", "max_protected_people", "max_people", "max_images_per_person", "loader_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be at least 0, got {getattr(self, name)}")
        if self.target not in SWEEP_TARGETS or self.weighting not in core.WEIGHTINGS:
            raise ValueError(f"--target must be one of {SWEEP_TARGETS} and --weighting one of {core.WEIGHTINGS}")
        if self.optimizer not in protection.OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {protection.OPTIMIZERS}, got {self.optimizer!r}")

    @property
    def ensembles(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(name, members): ``all`` (every source model), then each source model left out (``without_<name>``)."""
        out = [("all", tuple(self.source_models))]
        if self.transfer_masks and len(self.source_models) > 1:
            out += [(f"without_{m}", tuple(s for s in self.source_models if s != m)) for m in self.source_models]
        return tuple(out)

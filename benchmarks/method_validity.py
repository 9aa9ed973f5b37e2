"""The four validity criteria (LEAM_SPEC section 6) for every model x weighting x target, side by side.

    python benchmarks/method_validity.py [--work_dir=/tmp/method_validity] [--targets=identity,population,...]

Runs the study itself (``leam_jax.study.job.run``: the same tested functions that
publish its tables) once per target over ``../shared/faces`` with every default
model and weighting, occlusion at 1% and 5% with the default fill, no transfer
matrix, and the randomisation check on the default subset; each run resumes
if interrupted (``--work_dir`` keeps them). Then, per model, weighting and
target: AUC of BC same vs different person (full maps, pairs within a source
set, 95% CI over people), Spearman of the fully randomised model's maps to the
trained maps, LEAM / random Δcos at 1%, eyes+brows+nose share of the top 1%
against its area share, and which criteria pass (tables/validity.csv).

``--max_images_per_person=3`` keeps every person with up to three photos
(148 faces, about 15 minutes per target on 2 cores instead of 40).

The default (one target and weighting for every model) is chosen by the rule
of BUILD.md ("Defaults by evidence"): the variant meeting the most criteria
summed over the models, ties broken by the fewest models failing any
criterion, then by the higher mean AUC. One ``name=value`` line per variant,
then the summary line.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from absl import app, flags

from leam_jax.study import job
from leam_jax.study.config import DEFAULT_MODELS, StudyConfig

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"
CRITERIA = ("person_specific", "survives_randomisation", "beats_random_pixels", "critical_region_enriched")

_WORK = flags.DEFINE_string("work_dir", "/tmp/method_validity", "Where each target's study run goes (resumable).")
_TARGETS = flags.DEFINE_list("targets", ["population", "identification", "identity"], "Targets to compare.")
_MODELS = flags.DEFINE_list("models", list(DEFAULT_MODELS), "Models.")
_PER_PERSON = flags.DEFINE_integer("max_images_per_person", 0, "At most this many images per person (0: all); "
                                   "every person is kept, so the people bootstrap keeps its size.")


def _run(target: str) -> tuple[list[dict[str, str]], float]:
    out = Path(_WORK.value) / target
    config = StudyConfig(models=tuple(_MODELS.value), manifest=str(FACES / "manifest.csv"), output_dir=out,
                         target=target, occlusion_percents=(1.0, 5.0), transfer_percent=0.0, report=False,
                         max_images_per_person=_PER_PERSON.value,
                         resume=(out / "run.json").exists())
    t0 = time.perf_counter()
    job.run(config, log=lambda s: print(s, file=sys.stderr))
    with open(out / "tables" / "validity.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f)), time.perf_counter() - t0


def _score(rows: list[dict[str, str]]) -> tuple[int, int, float]:
    """(criteria met over the models, -models failing any, mean AUC): larger is better."""
    met = sum(int(r["criteria_met"]) for r in rows)
    failing = sum(any(r[c] != "1" for c in CRITERIA) for r in rows)
    aucs = [float(r["auc"]) for r in rows if r["auc"]]
    return met, -failing, sum(aucs) / len(aucs) if aucs else float("nan")


def main(argv) -> None:
    del argv
    if not (FACES / "manifest.csv").is_file():
        sys.exit(f"needs {FACES}/manifest.csv")
    variants: dict[tuple[str, str], list[dict[str, str]]] = {}
    for target in _TARGETS.value:
        rows, seconds = _run(target)
        print(f"# target {target}: {seconds:.0f} s")
        for r in rows:
            variants.setdefault((target, r["weighting"]), []).append(r)
    print(f"{'target':15s} {'weighting':9s} {'model':13s} {'AUC':>6s} {'rndSp':>6s} {'occ1x':>6s} "
          f"{'crit':>6s} {'area':>6s} criteria")
    for (target, weighting), rows in variants.items():
        for r in rows:
            print(f"{target:15s} {weighting:9s} {r['model']:13s} {float(r['auc'] or 'nan'):6.3f} "
                  f"{float(r['spearman_all_random'] or 'nan'):6.3f} {float(r['leam_over_random_1'] or 'nan'):6.2f} "
                  f"{float(r['critical_share'] or 'nan'):6.3f} {float(r['critical_area_share'] or 'nan'):6.3f} "
                  f"{''.join('+' if r[c] == '1' else '-' for c in CRITERIA)}")
    for (target, weighting), rows in variants.items():
        met, failing, auc = _score(rows)
        print(f"variant={target}/{weighting} criteria_met={met}/{4 * len(rows)} models_failing={-failing} "
              f"mean_auc={auc:.3f}")
    best = max(variants, key=lambda v: _score(variants[v]))
    met, failing, auc = _score(variants[best])
    print(f"default_target={best[0]} default_weighting={best[1]} criteria_met={met}/{4 * len(variants[best])} "
          f"models_failing={-failing} mean_auc={auc:.3f}")


if __name__ == "__main__":
    app.run(main)

"""The study behind ``python -m leam_jax.main`` (no flag parsing here): inputs -> sweep -> tables -> report."""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from leam_jax import core, models, weights
from leam_jax.face.pipeline import TEMPLATES
from leam_jax.study import files, inputs, people, randomisation, schema, sweep, tables
from leam_jax.study.compute import Gallery, ModelWorker, compute_shard, embed_shard
from leam_jax.study.config import StudyConfig
from leam_jax.study.loader import Loader

PIPELINE_MODELS = ("blazeface", "facemesh")  # the face pipeline's own weights


def select_taps(model_taps: dict[str, tuple[str, ...]], wanted: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """``--taps``: plain names apply to every model that has them, ``model/tap`` to one model."""
    if not wanted:
        return dict(model_taps)
    used, out = set(), {}
    for m, taps in model_taps.items():
        keep = tuple(t for t in taps if t in wanted or f"{m}/{t}" in wanted)
        if not keep:
            raise ValueError(f"--taps selects no tap of model {m}; its taps are {list(taps)}")
        used |= {t for t in wanted if t in keep or t in {f'{m}/{k}' for k in keep}}
        out[m] = keep
    unknown = [t for t in wanted if t not in used]
    if unknown:
        raise ValueError(f"--taps {unknown} match no tap of {list(model_taps)}")
    return out


def _sources(config: StudyConfig) -> tuple[list[inputs.Source], list[tuple[str, str]], str, bool]:
    """(sources with their content digests, duplicate rows dropped as (path, reason), a description, all_faces)."""
    caps = dict(max_people=config.max_people, max_images_per_person=config.max_images_per_person)
    if config.manifest:
        listed, described, all_faces = inputs.from_manifest(config.manifest, **caps), f"manifest {config.manifest}", False
    elif config.data_dir:
        listed, described, all_faces = inputs.from_data_dir(config.data_dir, **caps), f"data_dir {config.data_dir}", False
    else:  # built-in default: group photos; every face is analysed as its own identity
        listed, described, all_faces = inputs.builtin_samples(), "built-in sample photos (every face its own id)", True
    kept, dropped = inputs.drop_duplicates(inputs.with_digests(listed, config.loader_threads))
    return kept, dropped, described, all_faces


def _expect_inputs(store: sweep.ShardStore, config: StudyConfig, shards) -> None:
    """Each result's inputs digest, so --resume recomputes what changed: a shard depends on its own
    files, except under a gallery target, where every score depends on every file (the gallery)."""
    whole = sweep.inputs_digest([s for shard in shards for s in shard])
    own = {sweep.shard_name(i): sweep.inputs_digest(shard) for i, shard in enumerate(shards)}
    store.stage("embed").expect(own)
    gallery = config.target in core.GALLERY_TARGETS
    store.expect({**({k: whole for k in own} if gallery else own), "sanity": whole})


def _check_models(config: StudyConfig) -> dict[str, models.ModelSpec]:
    for m in config.models:
        if m not in models.REGISTRY:
            raise ValueError(f"unknown model {m!r}; known: {sorted(models.REGISTRY)}")
    specs = {m: models.REGISTRY[m] for m in config.models}
    for s in specs.values():
        if s.template not in TEMPLATES:
            raise ValueError(f"model template {s.template!r} unknown to the face pipeline")
    for m in (*config.models, *PIPELINE_MODELS):
        weights.check_available(m)  # before any model loads: a missing one is named at once
    return specs


def _check_pairs_column(config: StudyConfig, sources) -> None:
    """--pairs_within names a column the inputs have (auto and none always do)."""
    if config.pairs_within in ("auto", "none"):
        return
    columns = {k for s in sources for k, _ in s.attrs}
    if config.pairs_within not in columns:
        raise ValueError(f"--pairs_within={config.pairs_within}: no such manifest column (columns: {sorted(columns)})")


def _settings(config: StudyConfig, specs, taps, all_faces: bool, described: str) -> dict:
    """What run.json records and a resume must match (tuples as lists, as JSON stores them)."""
    settings = {
        **dataclasses.asdict(config.compute()),
        "models": list(config.models), "taps": {m: list(t) for m, t in taps.items()},
        "templates": {m: s.template for m, s in specs.items()}, "aligned": config.aligned, "crops": config.crops,
        "all_faces": all_faces, "shard_size": config.shard_size, "inputs": described,
        "group_by": list(config.group_by), "sanity_faces": config.sanity_faces,
        "sanity_steps": config.sanity_steps, "pairs_within": config.pairs_within,
        "max_image_pixels": config.max_image_pixels,
    }
    return json.loads(json.dumps(settings))


def _sweep(config: StudyConfig, specs, taps, sources, shards, store, all_faces: bool, mesh) -> int:
    """The embedding pass (gallery targets), this process's missing shards and (process 0) the
    randomisation check; returns how many shards were computed."""
    compute_cfg = config.compute()
    workers = [ModelWorker(_load(m), template=specs[m].template, taps=taps[m], config=compute_cfg, mesh=mesh)
               for m in config.models]
    from leam_jax.face.pipeline import FacePipeline  # loads the detector and mesh weights

    loader = Loader(FacePipeline(all_faces=all_faces), sorted({s.template for s in specs.values()}),
                    aligned=config.aligned, all_faces=all_faces, threads=config.loader_threads,
                    prefetch=config.prefetch, max_pixels=config.max_image_pixels, crops=config.crops)
    try:
        galleries = None
        if config.target in core.GALLERY_TARGETS:
            galleries = _gallery_pass(config, workers, loader, shards, store)
            if galleries is None:
                return 0
        computed = sweep.run_shards(
            shards, store, loader.iterate,
            lambda faces, key: compute_shard(workers, faces, key, compute_cfg, galleries),
            process_index=config.process_index, num_processes=config.num_processes,
            progress=sweep.Progress(sum(len(s) for s in shards)), stop_after=config.stop_after_shards)
        stopped = config.stop_after_shards is not None and _missing(store, len(shards))
        if config.process_index == 0 and config.sanity_faces and not stopped:
            _sanity_pass(config, workers, loader, sources, store)
        return computed
    finally:
        loader.close()


def _missing(store: sweep.ShardStore, n_shards: int) -> list[int]:
    done = store.done()
    return [i for i in range(n_shards) if sweep.shard_name(i) not in done]


def _gallery_pass(config: StudyConfig, workers, loader, shards, store) -> dict[str, Gallery] | None:
    """Embed every face first (resumable shards of their own, ``shards/embed/``), wait for every
    process's, then each model's gallery over the whole run (None: stopped early, tests)."""
    estore = store.stage("embed")
    sweep.run_shards(shards, estore, loader.iterate, lambda faces, key: embed_shard(workers, faces),
                     process_index=config.process_index, num_processes=config.num_processes,
                     progress=sweep.Progress(sum(len(s) for s in shards), label="images (embedding pass)"),
                     stop_after=config.stop_after_shards)
    if config.stop_after_shards is not None and _missing(estore, len(shards)):
        return None
    sweep.wait_for_all(estore, len(shards), timeout_s=config.wait_timeout_s)
    return galleries_from_store(estore, len(shards), [wk.name for wk in workers])


def galleries_from_store(estore: sweep.ShardStore, n_shards: int, model_names) -> dict[str, Gallery]:
    """Each model's gallery from the embedding pass's shards."""
    parts = [estore.load(i) for i in range(n_shards)]
    persons = np.concatenate([p[schema.meta("person")] for p in parts])
    out = {}
    for m in model_names:
        emb = [p[schema.per_model("emb", m)] for p in parts if schema.per_model("emb", m) in p]
        out[m] = Gallery.from_embeddings(np.concatenate(emb) if emb else np.zeros((0, 1), np.float32), persons)
    return out


def _sanity_pass(config: StudyConfig, workers, loader, sources, store) -> None:
    """The randomisation check on a seeded subset of whole people (``shards/sanity.npz``; resumable)."""
    if "sanity" in store.done():
        return
    chosen = randomisation.choose_sources(sources, config.sanity_faces, config.seed)
    loaded = next(iter(loader.iterate([chosen]))) if chosen else None
    if loaded is None or not loaded.faces:
        return
    arrays = randomisation.sanity_arrays(workers, loaded.faces, seed=config.seed, max_steps=config.sanity_steps)
    store.write("sanity", arrays, {"faces": len(loaded.faces)})


def _load(name: str):
    return weights.load(name)


def use_compile_cache(folder: str) -> None:
    """XLA's persistent compilation cache in ``folder`` (the study's programs take minutes to compile
    on a CPU; cached, a rerun or resume starts at once). A folder set by the environment wins."""
    if folder and not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(Path(folder).expanduser()))
        compilation_cache.reset_cache()  # JAX decides on first compile whether to cache; decide again


def run(config: StudyConfig, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the study of ``config``; returns the summary (``summary.json``).

    Every setting, model and weight is checked before any slow work and before ``run.json`` is
    written; the output folder is locked for this process index while the run writes to it.
    """
    t0 = time.perf_counter()
    config.validate()
    use_compile_cache(config.compile_cache)
    specs = _check_models(config)
    if config.coordinator_address:
        jax.distributed.initialize(config.coordinator_address, config.num_processes, config.process_index)
    mesh = core.batch_mesh()
    if config.batch_size % mesh.devices.size:
        raise ValueError(f"--batch_size {config.batch_size} must be a multiple of the {mesh.devices.size} devices")
    out = Path(config.output_dir)
    with sweep.OutputLock(out, config.process_index) as lock:
        if lock.note:
            log(f"leam_jax: {lock.note}")
        return _run_locked(config, specs, mesh, out, log, t0)


def _run_locked(config: StudyConfig, specs, mesh, out: Path, log, t0: float) -> dict:
    """Inputs, shard plan, the passes of the sweep and (process 0) the tables, with the folder locked."""
    sources, duplicates, described, all_faces = _sources(config)
    _check_pairs_column(config, sources)
    taps = select_taps({m: s.taps for m, s in specs.items()}, tuple(config.taps))
    settings = _settings(config, specs, taps, all_faces, described)
    shards = sweep.plan_shards(sources, config.shard_size)
    store = sweep.ShardStore(out, process_index=config.process_index)
    store.open(sweep.fingerprint(settings, shards), resume=config.resume, shared=config.num_processes > 1)
    _expect_inputs(store, config, shards)
    log(f"leam_jax: {len(sources)} images ({described}) in {len(shards)} shards"
        f"{f', {len(duplicates)} duplicate rows dropped (failures.csv)' if duplicates else ''}; models "
        f"{list(config.models)}; weightings {list(config.weightings)}; {mesh.devices.size} device(s)")
    computed = _sweep(config, specs, taps, sources, shards, store, all_faces, mesh)
    summary = {"config": settings, "output_dir": str(out.resolve()), "images": len(sources),
               "shards": len(shards), "computed_shards_this_run": computed, "models": list(config.models),
               "weightings": list(config.weightings), "duplicates": len(duplicates)}
    if config.stop_after_shards is not None and _missing(store, len(shards)):
        return {**summary, "stopped": True}
    if config.process_index != 0:
        return {**summary, "report": f"process {config.process_index}: shards done; process 0 writes the tables"}
    return _finish(config, out, store, len(shards), settings, summary, t0, duplicates)


def _finish(config: StudyConfig, out: Path, store, n_shards: int, settings: dict, summary: dict, t0: float,
            rejected: list[tuple[str, str]]) -> dict:
    """Process 0: wait for every shard, then tables, summary.json and the report."""
    sweep.wait_for_all(store, n_shards, timeout_s=config.wait_timeout_s)
    sanity = store.load("sanity") if "sanity" in store.done() else None
    writers = [functools.partial(people.write_people, cap=config.report_people)]
    summary.update(tables.write_tables(out, [store.load(i) for i in range(n_shards)], settings, sanity=sanity,
                                       writers=writers, rejected=rejected))
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    files.write_json(out / "summary.json", summary)
    report_path = None
    if config.report:
        from leam_jax.study import report

        report_path = report.write_report(out, faces=config.report_faces)
    summary["report"] = _describe(out, summary, report_path)
    return summary


def _num(value: str, spec: str = ".3f") -> str:
    """A table cell for the console: formatted, or n/a when empty."""
    return format(float(value), spec) if value else "n/a"


def _describe(out: Path, summary: dict, report_path) -> str:
    lines = [f"leam_jax: {summary['faces']} faces of {summary['people']} ids from {summary['images']} images; "
             f"{summary['failures']} rejected (failures.csv)"]
    with open(out / "tables" / "headline.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    lines.append(f"  model / weighting ({rows[0]['target'] if rows else ''} target): person-specificity AUC "
                 "[95% CI] and Cohen's d (pairs) | Spearman to trained maps, all layers random | "
                 "critical share at top 1% (area) | Δcos top-1% LEAM vs random")
    for r in rows:
        lines.append(f"  {r['model']} / {r['weighting']}: AUC {_num(r['auc'])} [{_num(r['auc_ci_low'])}, "
                     f"{_num(r['auc_ci_high'])}] d={_num(r['cohens_d'], '.2f')} ({r['pairs'] or 'no pairs'}) | "
                     f"{_num(r['spearman_all_random'])} | {_num(r['critical_share'])} "
                     f"({_num(r['critical_area_share'])}) | {_num(r['dcos_leam_1'], '.4f')} vs "
                     f"{_num(r['dcos_random_1'], '.4f')}")
    lines.append(f"  tables: {out.resolve() / 'tables'}")
    if report_path is not None:
        lines.append(f"  report: {Path(report_path).resolve()}")
    return "\n".join(lines)


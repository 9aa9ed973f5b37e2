"""Streaming preprocessing for a sweep: decode, detect, align and parse in worker threads.

Each image becomes zero or more :class:`FaceInput` (its faces in the analysis
frame with their label maps, and each model template's input crop warped from
the photo) or a rejection ``(path, reason)``. Shards are submitted ahead of
the device (``prefetch``), so decoding overlaps the LEAM work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from leam_jax.face import decode
from leam_jax.study.inputs import Source


@dataclasses.dataclass
class FaceInput:
    source: Source
    face_index: int
    person: str  # the id statistics group by (for --all_faces: one id per face)
    labels: np.ndarray  # [F, F] uint8 face_regions classes in the analysis frame
    crops: dict[str, np.ndarray]  # template -> [S, S, 3] uint8 model input
    frame_to_model: dict[str, np.ndarray]  # template -> [2, 3] analysis frame px -> model input px


@dataclasses.dataclass
class LoadedShard:
    faces: list[FaceInput]
    failures: list[tuple[str, str]]  # (path, reason), in input order


class PixelBudget:
    """At most ``limit`` decoded pixels in flight across the loader's threads (an image larger
    than the rest of the budget waits; one at the limit runs alone), so the loader's memory is
    bounded by the budget, not by the thread count or the inputs."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._cv = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        with self._cv:
            self._cv.wait_for(lambda: self.used == 0 or self.used + pixels <= self.limit)
            self.used += pixels
        try:
            yield
        finally:
            with self._cv:
                self.used -= pixels
                self._cv.notify_all()


def prepare_image(pipeline, source: Source, templates: Sequence[str], *, aligned: bool, all_faces: bool,
                  max_pixels: int = decode.DEFAULT_MAX_PIXELS, budget: PixelBudget | None = None,
                  crops: bool = False) -> list[FaceInput]:
    """One image -> its faces (raises :class:`decode.ImageError` with the reason). The header is
    checked against ``max_pixels`` first; the decoded photo is held under ``budget``."""
    w, h = decode.probe(source.path, max_pixels)
    with budget.hold(w * h) if budget is not None else contextlib.nullcontext():
        image = decode.decode_rgb(decode.read_checked(source.path, max_pixels, (w, h)), source.path)
        faces = pipeline.faces(image, source.path, aligned=aligned, crop=crops)
        return _face_inputs(pipeline, image, faces, source, templates, all_faces)


def _face_inputs(pipeline, image, faces, source: Source, templates, all_faces: bool) -> list[FaceInput]:
    out = []
    for face in faces if all_faces else faces[:1]:
        crops, f2m = {}, {}
        for t in templates:
            crops[t], f2m[t] = pipeline.model_input(image, face, t)
        person = f"{source.person}#{face.face_index}" if all_faces else source.person
        out.append(FaceInput(source, face.face_index, person, face.labels.astype(np.uint8), crops, f2m))
    return out


def _safe(prepare, pipeline, source, templates, aligned, all_faces, max_pixels, budget, crops):
    try:
        return prepare(pipeline, source, templates, aligned=aligned, all_faces=all_faces,
                       max_pixels=max_pixels, budget=budget, crops=crops)
    except decode.ImageError as e:
        return (e.path, e.reason)
    except Exception as e:  # noqa: BLE001 - a bad file must not stop the sweep; the reason is kept
        return (source.path, f"could not process ({type(e).__name__}: {e})")


class Loader:
    """Prepares shards in a thread pool, ``prefetch`` shards ahead of the consumer.

    ``threads=0`` (the default) starts one thread per CPU core: on an accelerator host the
    loader has the cores to itself, and decoding, cv2 warps and the detector release the GIL.
    Whatever the thread count, the photos being worked on hold at most ``max_pixels`` decoded
    pixels together (:class:`PixelBudget`; the bound in BUILD.md).
    """

    def __init__(self, pipeline, templates: Sequence[str], *, aligned: bool = False, all_faces: bool = False,
                 threads: int = 0, prefetch: int = 1, max_pixels: int = decode.DEFAULT_MAX_PIXELS,
                 crops: bool = False, prepare=prepare_image):
        self.pipeline = pipeline
        self.prepare = prepare  # prepare_image's signature; what one image becomes
        self.crops = crops
        self.max_pixels = max_pixels
        self.budget = PixelBudget(max_pixels)
        self.templates = tuple(templates)
        self.aligned = aligned
        self.all_faces = all_faces
        self.prefetch = max(0, prefetch)
        self._pool = ThreadPoolExecutor(max_workers=threads if threads > 0 else (os.cpu_count() or 1), thread_name_prefix="leam-loader")

    def _submit(self, shard: Sequence[Source]) -> list[Future]:
        return [self._pool.submit(_safe, self.prepare, self.pipeline, s, self.templates, self.aligned, self.all_faces,
                                  self.max_pixels, self.budget, self.crops) for s in shard]

    def iterate(self, shards: Sequence[Sequence[Source]]) -> Iterator[LoadedShard]:
        """Loaded shards in order; up to ``prefetch`` later shards are in flight meanwhile."""
        pending: list[list[Future]] = []
        nxt = 0
        try:
            for _ in range(len(shards)):
                while nxt < len(shards) and len(pending) <= self.prefetch:
                    pending.append(self._submit(shards[nxt]))
                    nxt += 1
                futures = pending.pop(0)
                faces, failures = [], []
                for fut in futures:
                    result = fut.result()
                    if isinstance(result, tuple):
                        failures.append(result)
                    else:
                        faces.extend(result)
                yield LoadedShard(faces, failures)
        finally:
            for futures in pending:
                for fut in futures:
                    fut.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

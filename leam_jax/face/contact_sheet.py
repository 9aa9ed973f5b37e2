"""A contact sheet of aligned faces with the region overlay and landmarks, for a person to look at.

    python -m leam_jax.face.contact_sheet --data_dir ../shared/faces/wild_small --out sheet.png
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np
from absl import app, flags

from leam_jax.face import decode, regions
from leam_jax.face.pipeline import AlignedFace, FacePipeline


def class_colours() -> np.ndarray:
    """One distinct RGB colour per class (background black)."""
    n = len(regions.CLASSES)
    cols = [(0, 0, 0)] + [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / (n - 1), 0.9, 1.0)) for i in range(n - 1)]
    return np.array(cols, np.uint8)


def overlay(face: AlignedFace, alpha: float = 0.35) -> np.ndarray:
    """The analysis-frame face with regions tinted, region borders, mesh dots and the 5 points."""
    img = face.frame.astype(np.float32)
    colours = class_colours()[face.labels].astype(np.float32)
    inside = (face.labels > 0)[..., None]
    out = np.where(inside, (1 - alpha) * img + alpha * colours, img)
    edges = cv2.morphologyEx(face.labels.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    out[edges] = 255
    out = out.clip(0, 255).astype(np.uint8)
    for x, y in face.frame_mesh:
        cv2.circle(out, (int(round(x)), int(round(y))), 1, (0, 255, 255), -1)
    p5 = face.points5 @ face.image_to_frame[:, :2].T + face.image_to_frame[:, 2]
    for x, y in p5:
        cv2.circle(out, (int(round(x)), int(round(y))), 3, (255, 0, 0), -1)
    return out


def legend(width: int) -> np.ndarray:
    names = regions.CLASSES
    cols = class_colours()
    row_h = 18
    img = np.full((row_h * ((len(names) + 3) // 4), width, 3), 255, np.uint8)
    for i, name in enumerate(names):
        x, y = (i % 4) * (width // 4), (i // 4) * row_h
        cv2.rectangle(img, (x + 4, y + 4), (x + 16, y + 14), tuple(int(c) for c in cols[i]), -1)
        cv2.putText(img, name, (x + 20, y + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def make_sheet(paths: list[str], pipeline: FacePipeline, *, columns: int = 6, aligned: bool = False) -> tuple[np.ndarray, list[str]]:
    """RGB sheet and the list of rejected files with reasons."""
    tiles, rejected = [], []
    for p in paths:
        try:
            face = pipeline.read(p, aligned=aligned)[0]
        except decode.ImageError as e:
            rejected.append(str(e))
            continue
        tile = overlay(face)
        cv2.putText(tile, Path(p).parent.name[:18], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    if not tiles:
        raise ValueError("no face in any of the images")
    s = tiles[0].shape[0]
    while len(tiles) % columns:
        tiles.append(np.full((s, s, 3), 255, np.uint8))
    rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
    grid = np.concatenate(rows, axis=0)
    return np.concatenate([grid, legend(grid.shape[1])], axis=0), rejected


FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder with one sub-folder per person.")
flags.DEFINE_string("out", "contact_sheet.png", "PNG to write.")
flags.DEFINE_integer("max_images", 36, "At most this many images.")
flags.DEFINE_bool("aligned", False, "Images are pre-aligned face chips (skip detection).")


def main(argv: list[str]) -> None:
    del argv
    items = decode.list_people(FLAGS.data_dir)[: FLAGS.max_images]
    sheet, rejected = make_sheet([it.path for it in items], FacePipeline(), aligned=FLAGS.aligned)
    cv2.imwrite(FLAGS.out, sheet[..., ::-1])
    print(f"wrote {FLAGS.out} ({len(items) - len(rejected)} faces); rejected: {rejected or 'none'}")


if __name__ == "__main__":
    flags.mark_flag_as_required("data_dir")
    app.run(main)

"""The face pipeline on the real photos: detection rate, landmarks in their regions,
label-map coverage, bad inputs, and alignment quality against dlib's own pipeline."""

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest

from leam_jax.face import decode, regions
from leam_jax.face.pipeline import FacePipeline, mesh_points5

pytestmark = [pytest.mark.weights, pytest.mark.faces]

NOSE_CLASSES = {regions.CLASS_ID[c] for c in ("nose", "nose_bridge", "nose_tip")}


@pytest.fixture(scope="module")
def pipeline(dlib_dat):
    return FacePipeline()


@pytest.fixture(scope="module")
def shared_run(pipeline, faces_dir):
    """Every image of ../shared/faces through the pipeline once (in the wild mode, no hints)."""
    faces, misses = {}, {}
    for s in ("dlib_johns", "orl_att", "wild_small"):
        for it in decode.list_people(faces_dir / s):
            try:
                faces[it.path] = pipeline.read(it.path)[0]
            except decode.ImageError as e:
                misses[it.path] = e.reason
    return faces, misses


def test_faces_found_in_98_percent(shared_run):
    faces, misses = shared_run
    total = len(faces) + len(misses)
    rate = len(faces) / total
    print(f"\nfaces found in {len(faces)}/{total} = {rate:.2%}; misses: {misses}")
    assert total == 466 and rate >= 0.98


def test_landmarks_fall_in_their_regions(shared_run):
    faces, _ = shared_run
    nose_ok = eyes_ok = oval_ok = 0
    for f in faces.values():
        p5 = mesh_points5(f.frame_mesh)
        lab = lambda p, f=f: f.labels[int(round(p[1])), int(round(p[0]))]  # noqa: E731
        nose_ok += lab(f.frame_mesh[1]) in NOSE_CLASSES
        eyes_ok += (lab(p5[0]) == regions.CLASS_ID["r_eye"]) and (lab(p5[1]) == regions.CLASS_ID["l_eye"])
        oval = regions.oval_mask(f.frame_mesh, f.labels.shape)
        oval_ok += not np.any(oval & (f.labels == 0))
    n = len(faces)
    print(f"\nnose tip in nose: {nose_ok}/{n}; both eye centres in their eye class: {eyes_ok}/{n}; "
          f"label map covers the whole oval: {oval_ok}/{n}")
    assert nose_ok / n >= 0.98 and eyes_ok / n >= 0.98 and oval_ok == n


def test_frame_alignment_is_least_squares_optimal(shared_run, pipeline):
    """The 5 points land on the template as well as any similarity can place them."""
    faces, _ = shared_run
    rng = np.random.default_rng(0)
    residuals = []
    for f in list(faces.values())[::10]:
        p5 = f.points5
        sse = lambda a, p5=p5: np.sum((p5 @ a[:, :2].T + a[:, 2] - pipeline.template) ** 2)  # noqa: E731
        best = sse(f.image_to_frame)
        residuals.append(np.sqrt(best / 5))
        for _ in range(20):
            angle, scale = rng.normal(0, 0.01), np.exp(rng.normal(0, 0.01))
            c, s_ = np.cos(angle) * scale, np.sin(angle) * scale
            tweak = np.array([[c, -s_, rng.normal(0, 0.5)], [s_, c, rng.normal(0, 0.5)]])
            a = tweak[:, :2] @ f.image_to_frame
            assert sse(np.concatenate([a[:, :2], (tweak[:, :2] @ f.image_to_frame[:, 2] + tweak[:, 2])[:, None]], 1)) >= best - 1e-6
    print(f"\nRMS 5-point residual in the 256 frame: median {np.median(residuals):.2f} px (face shape vs template)")


# Batched vs photo by photo: the same arithmetic except XLA's rounding at another batch shape. On all 414
# photos of wild_small + orl_att at batch 2 (the CPU default) boxes are identical, the mesh within 0.0063 px and
# at most 0.031% of a face's label pixels change; at batch 16, boxes 1.8e-4 px, mesh 0.016 px, labels 0.035%.
BATCH_BOX_PX, BATCH_MESH_PX, BATCH_LABELS_CHANGED = 1e-3, 0.05, 0.002


def test_batched_reader_equals_reading_photo_by_photo(pipeline, shared_run, faces_dir, tmp_path):
    """read_many (batches of 4, so padded and ragged batches) against read() per photo, with bad files among them."""
    faces, misses = shared_run
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    photos = [it.path for it in decode.list_people(faces_dir / "wild_small")]
    photos += [it.path for it in decode.list_people(faces_dir / "orl_att")[::8]]
    paths = photos[:5] + [str(tmp_path / "empty.jpg")] + photos[5:] + [str(tmp_path / "text.jpg")]
    batched = copy.copy(pipeline)  # the same networks (no new compiles of batch 1), another batch size
    batched.batch_size = 4
    results = dict(zip(paths, batched.read_many(paths)))
    assert results[str(tmp_path / "empty.jpg")].reason == "empty file"
    assert results[str(tmp_path / "text.jpg")].reason == "not a decodable image"
    box = mesh = labels = 0.0
    for path in photos:
        if path in misses:
            assert results[path].reason == misses[path]
            continue
        ref, got = faces[path], results[path][0]
        box = max(box, float(np.abs(got.box - ref.box).max()))
        mesh = max(mesh, float(np.abs(got.mesh[:, :2] - ref.mesh[:, :2]).max()))
        labels = max(labels, float(np.mean(got.labels != ref.labels)))
    print(f"\n{len(photos)} photos, batched vs one by one: boxes {box:.2g} px, mesh {mesh:.2g} px, "
          f"label pixels changed {labels:.2%} (worst face)")
    assert box <= BATCH_BOX_PX and mesh <= BATCH_MESH_PX and labels <= BATCH_LABELS_CHANGED


def _face_photo(faces_dir) -> np.ndarray:
    return decode.read_rgb(sorted((faces_dir / "wild_small" / "obama").iterdir())[0])


def test_documented_outcomes_for_bad_and_odd_inputs(pipeline, faces_dir, tmp_path):
    photo = _face_photo(faces_dir)
    bgr = photo[..., ::-1]
    outcomes = {}
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "corrupt.jpg").write_bytes(cv2.imencode(".jpg", bgr)[1].tobytes()[:300])
    cv2.imwrite(str(tmp_path / "one.png"), np.zeros((1, 1, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "deep.png"), bgr.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "alpha.png"), np.concatenate([bgr, np.full(bgr.shape[:2] + (1,), 255, np.uint8)], -1))
    cv2.imwrite(str(tmp_path / "gray.pgm"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    huge = np.zeros((8000, 8000, 3), np.uint8)
    big = cv2.resize(bgr, None, fx=4, fy=4)[:8000, :8000]
    huge[: big.shape[0], : big.shape[1]] = big
    cv2.imwrite(str(tmp_path / "huge.jpg"), huge)
    yy, xx = np.mgrid[:300, :400]
    cv2.imwrite(str(tmp_path / "noface.png"), np.stack([xx % 255, yy % 255, (xx + yy) % 255], -1).astype(np.uint8))
    for name in ("zero.jpg", "text.jpg", "corrupt.jpg", "one.png", "deep.png", "alpha.png", "gray.pgm", "huge.jpg", "noface.png"):
        try:
            outcomes[name] = f"face, score {pipeline.read(tmp_path / name)[0].score:.2f}"
        except decode.ImageError as e:
            assert e.path.endswith(name)
            outcomes[name] = e.reason
    print("\n" + "\n".join(f"  {k}: {v}" for k, v in outcomes.items()))
    assert outcomes["zero.jpg"] == "empty file"
    assert outcomes["text.jpg"] == "not a decodable image"
    assert outcomes["corrupt.jpg"] in ("not a decodable image", "no face found")  # a truncated JPEG may decode grey
    assert outcomes["one.png"].startswith("image too small for a face (1x1")
    for name in ("deep.png", "alpha.png", "gray.pgm", "huge.jpg"):
        assert outcomes[name].startswith("face"), name
    assert outcomes["noface.png"] == "no face found"


def test_several_faces_largest_first_or_all(faces_dir, dlib_dat):
    photo = _face_photo(faces_dir)
    h, w = photo.shape[:2]
    small = cv2.resize(photo, (w // 2, h // 2))
    canvas = np.zeros((h, w + w // 2, 3), np.uint8)
    canvas[:, :w] = photo
    canvas[: h // 2, w:] = small
    one = FacePipeline().faces(canvas, "two.png")
    both = FacePipeline(all_faces=True).faces(canvas, "two.png")
    assert len(one) == 1 and len(both) == 2
    assert one[0].box[0] < w and both[1].box[0] >= w  # the large face (left) first, then the small one


@pytest.mark.dlib
@pytest.mark.slow
def test_alignment_auc_within_002_of_dlib_pipeline(pipeline, shared_run, dlib, dlib_landmarker, dlib_model):
    """Verification AUC over all pairs of wild_small + orl_att: our detect -> mesh -> align -> dlib
    model vs dlib's HOG + 5-point predictor + get_face_chip -> the same network."""
    import jax.numpy as jnp

    from leam_jax import stats

    faces, _ = shared_run
    detector, predictor = dlib_landmarker
    ours, theirs = {}, {}
    for path, face in faces.items():
        if "dlib_johns" in path:
            continue
        img = decode.read_rgb(path)
        ours[path] = pipeline.model_input(img, face, "dlib150")[0]
        dets = detector(img, 1)
        if dets:
            theirs[path] = dlib.get_face_chip(img, predictor(img, max(dets, key=lambda r: r.area())), 150, 0.25)

    def auc(chips):
        x = np.stack(list(chips.values()))
        emb = np.concatenate([np.asarray(dlib_model.embed(jnp.asarray(x[i : i + 32]))) for i in range(0, len(x), 32)])
        persons = [Path(p).parent.name for p in chips]
        s, same = stats.pair_scores(emb, np.unique(persons, return_inverse=True)[1], metric="euclidean")
        return float(stats.roc_auc(s, same))

    a_ours, a_dlib = auc(ours), auc(theirs)
    print(f"\nAUC ours {a_ours:.4f} ({len(ours)} images) vs dlib pipeline {a_dlib:.4f} ({len(theirs)} images)")
    assert a_ours >= a_dlib - 0.02


def test_pre_aligned_mode_skips_the_detector(pipeline, faces_dir):
    """dlib chips as pre-aligned input: no detector, the mesh still lands on the face."""
    items = decode.list_people(faces_dir / "dlib_johns")[::5]
    ok = 0
    for it in items:
        face = pipeline.read(it.path, aligned=True)[0]
        assert face.score == 1.0  # no detection involved
        ok += face.labels[tuple(np.round(face.frame_mesh[1][::-1]).astype(int))] in NOSE_CLASSES
    assert ok == len(items)

"""BlazeFace: layers vs lax, decoding and weighted NMS vs numpy oracles, the converter's
strictness, parity with TF.js on real photos, and detection on real photos."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from leam_jax import core
from leam_jax.face import detection
from leam_jax.models import blazeface as bf

PARITY_ATOL = 1e-4
ORL_PARITY = ("s1/1.pgm", "s22/3.pgm")


# --- layers and module (random weights) -----------------------------------------


@pytest.mark.parametrize("size,k,stride,padding", [(16, 3, 1, "SAME"), (15, 3, 2, "SAME"), (20, 5, 2, "SAME"),
                                                   (9, 1, 1, "VALID"), (11, 3, 1, "VALID")])
def test_conv_layers_match_lax(size, k, stride, padding):
    rng = np.random.default_rng(size * 10 + k + stride)
    x = jnp.asarray(rng.normal(size=(2, size, size + 3, 6)), jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")
    hi = jax.lax.Precision.HIGHEST
    conv = bf.Conv(6, 5, k, stride=stride, padding=padding, rngs=nnx.Rngs(1))
    conv.bias[...] = jnp.asarray(rng.normal(size=5), jnp.float32)
    dw = bf.DepthwiseConv(6, k, stride=stride, padding=padding, rngs=nnx.Rngs(2))

    @core.jit
    def both(x, ck, cb, dk):
        ref_c = jax.lax.conv_general_dilated(x, ck, (stride, stride), padding, dimension_numbers=dn, precision=hi) + cb
        ref_d = jax.lax.conv_general_dilated(x, dk, (stride, stride), padding, dimension_numbers=dn,
                                             feature_group_count=6, precision=hi)
        return (bf.conv2d(x, ck, cb, stride=stride, padding=padding), ref_c,
                bf.depthwise_conv2d(x, dk, stride=stride, padding=padding), ref_d)

    ours_c, ref_c, ours_d, ref_d = both(x, conv.kernel[...], conv.bias[...], dw.kernel[...])
    assert ours_c.shape == ref_c.shape and ours_d.shape == ref_d.shape
    np.testing.assert_allclose(np.asarray(ours_c), np.asarray(ref_c), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours_d), np.asarray(ref_d), atol=1e-5)
    np.testing.assert_allclose(np.asarray(conv(x[:1])), np.asarray(ref_c[:1]), atol=1e-5)  # the module = the function


def test_module_shapes_taps_and_bad_input():
    apply, params = bf_random()
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 256, 256, 3)), jnp.float32)
    zeros = {"s16": jnp.zeros((2, 16, 16, 96)), "s8": jnp.zeros((2, 8, 8, 96))}

    @core.jit
    def run(params, x, zeros):
        (reg, logits), (reg_p, _) = apply(params, x), apply(params, x, zeros)
        # The tap sits on the 8x8 features: d sum(cls8 logits) / d s8 is the cls8 kernel summed over its outputs.
        g = jax.grad(lambda p: apply(params, x, {"s8": p})[1][:, 512:].sum())(zeros["s8"])
        return reg, logits, reg_p, g

    reg, logits, reg_p, g = run(params, x, zeros)
    assert reg.shape == (2, 896, 16) and logits.shape == (2, 896, 1)
    np.testing.assert_allclose(np.asarray(reg_p), np.asarray(reg), rtol=1e-5, atol=1e-5 * float(jnp.abs(reg).max()))
    np.testing.assert_allclose(np.asarray(g), np.broadcast_to(params["cls8"]["kernel"][...].sum(-1)[0, 0], g.shape), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="expects images"):
        apply(params, x[:, :128])
    with pytest.raises(ValueError, match="unknown taps"):
        apply(params, x, {"nope": 0.0})


def bf_random():
    from leam_jax.adapters import from_nnx

    return from_nnx(bf.BlazeFace(rngs=nnx.Rngs(0)))


# --- anchors, decoding, NMS, letterbox (numpy oracles) ----------------------------


def test_anchors_layout():
    a = detection.anchors()
    assert a.shape == (896, 2)
    np.testing.assert_array_equal(a[:4], [[8, 8], [8, 8], [24, 8], [24, 8]])
    np.testing.assert_array_equal(a[2 * 16:2 * 16 + 2], [[8, 24], [8, 24]])  # second row of the 16x16 map
    np.testing.assert_array_equal(a[512:518], [[16, 16]] * 6)  # 8x8 map, 6 anchors per cell
    np.testing.assert_array_equal(a[-1], [240, 240])


def test_decode_known_box_and_keypoints():
    """An anchor with known offsets decodes to the box and keypoints computed by hand."""
    reg = np.zeros((896, 16), np.float32)
    logits = np.full((896, 1), -8.0, np.float32)
    i = (3 * 16 + 5) * 2 + 1  # 16x16 map, cell row 3 col 5, second anchor: centre (88, 56)
    j = 512 + (2 * 8 + 7) * 6 + 4  # 8x8 map, cell row 2 col 7: centre (240, 80)
    reg[i, :4] = [4.0, -6.0, 40.0, 50.0]
    reg[i, 4:] = np.arange(12) - 5.0
    reg[j, :4] = [0.0, 0.0, 100.0, 60.0]
    logits[i], logits[j] = np.log(0.8 / 0.2), 150.0  # 150 is clipped to 100 before the sigmoid
    boxes, kps, scores = core.jit(detection.decode)(reg, logits)
    np.testing.assert_allclose(np.asarray(boxes[i]), [88 + 4 - 20, 56 - 6 - 25, 88 + 4 + 20, 56 - 6 + 25], atol=1e-5)
    np.testing.assert_allclose(np.asarray(kps[i]), np.array([88.0, 56.0]) + (np.arange(12) - 5.0).reshape(6, 2), atol=1e-5)
    np.testing.assert_allclose(np.asarray(boxes[j]), [190, 50, 290, 110], atol=1e-5)
    np.testing.assert_allclose(float(scores[i]), 0.8, rtol=1e-6)
    np.testing.assert_allclose(float(scores[j]), 1 / (1 + np.exp(-100.0)), rtol=1e-7)
    # batched == single
    bb, bk, bs = detection.decode(np.stack([reg, reg * 0]), np.stack([logits, logits]))
    np.testing.assert_allclose(np.asarray(bb[0]), np.asarray(boxes), atol=1e-6)
    with pytest.raises(ValueError, match="values per anchor"):
        detection.decode(reg[:, :10], logits)
    with pytest.raises(ValueError, match="anchors"):
        detection.decode(reg[:100], logits[:100])


def _iou_np(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def weighted_nms_reference(boxes, kps, scores, thr, min_score, max_det):
    """MediaPipe's WeightedNonMaxSuppression loop, in plain numpy."""
    locs = np.concatenate([boxes, kps.reshape(len(boxes), -1)], 1).astype(np.float64)
    order = [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] >= min_score]
    out = []
    while order and len(out) < max_det:
        top = order[0]
        members = [j for j in order if _iou_np(boxes[top], boxes[j]) > thr]
        order = [j for j in order if j not in members]
        w = scores[members].astype(np.float64)
        out.append(((w[:, None] * locs[members]).sum(0) / w.sum(), scores[top]))
    return out


def test_weighted_nms_merges_two_overlapping_boxes_by_hand():
    boxes = np.array([[10, 10, 50, 50], [14, 12, 54, 52], [100, 100, 140, 150], [12, 10, 50, 48]], np.float32)
    kps = np.arange(4 * 12, dtype=np.float32).reshape(4, 6, 2)
    scores = np.array([0.9, 0.6, 0.7, 0.2], np.float32)  # the last is below min_score
    out_b, out_k, out_s, valid = core.jit(detection.weighted_nms, static_argnames=("max_detections",))(
        boxes, kps, scores, iou_threshold=0.3, min_score=0.5, max_detections=4)
    assert valid.tolist() == [True, True, False, False]
    assert _iou_np(boxes[0], boxes[1]) > 0.3 and _iou_np(boxes[0], boxes[2]) == 0
    merged = (0.9 * boxes[0] + 0.6 * boxes[1]) / 1.5  # = [11.6, 10.8, 51.6, 50.8]
    np.testing.assert_allclose(np.asarray(out_b[0]), merged, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out_k[0]), (0.9 * kps[0] + 0.6 * kps[1]) / 1.5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out_s[:2]), [0.9, 0.7], atol=1e-7)
    np.testing.assert_allclose(np.asarray(out_b[1]), boxes[2], atol=1e-5)
    assert not np.asarray(out_b[2:]).any()


def test_weighted_nms_matches_reference_on_random_clusters():
    rng = np.random.default_rng(3)
    centres = rng.uniform(30, 220, (6, 2))
    c = centres[rng.integers(0, 6, 80)] + rng.normal(0, 6, (80, 2))
    wh = rng.uniform(20, 60, (80, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)
    kps = rng.uniform(0, 256, (80, 6, 2)).astype(np.float32)
    scores = rng.uniform(0, 1, 80).astype(np.float32)
    ref = weighted_nms_reference(boxes, kps, scores, 0.3, 0.4, 10)
    b, k, s, v = detection.weighted_nms(boxes, kps, scores, iou_threshold=0.3, min_score=0.4, max_detections=10)
    assert int(v.sum()) == len(ref) >= 4
    for n, (loc, score) in enumerate(ref):
        np.testing.assert_allclose(np.asarray(b[n]), loc[:4], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(np.asarray(k[n]).ravel(), loc[4:], rtol=1e-5, atol=1e-3)
        assert float(s[n]) == pytest.approx(float(score))
    with pytest.raises(ValueError, match="boxes"):
        detection.weighted_nms(boxes[:, :3], kps, scores)


def test_letterbox_places_and_maps_back():
    img = np.zeros((50, 100, 3), np.uint8)
    img[10:20, 60:80] = 255  # a white patch: x 60..80, y 10..20
    canvas, lb = detection.letterbox(img)
    assert canvas.shape == (256, 256, 3) and lb.scale == (2.56, 2.56) and lb.offset == (0.0, 64.0)
    c = np.asarray(canvas)[..., 0]
    ys, xs = np.nonzero(c > 127.5)
    # patch edges 60, 80, 10, 20 -> 153.6, 204.8, 89.6, 115.2 on the canvas
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (154, 205, 90, 115)
    assert c[:64].max() == 0 and c[64 + 128:].max() == 0  # black bars above and below
    np.testing.assert_allclose(lb.to_image([[153.6, 89.6], [204.8, 115.2]]), [[60, 10], [80, 20]], atol=1e-9)
    x = detection.preprocess(canvas)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    with pytest.raises(ValueError, match="RGB image"):
        detection.letterbox(img[..., 0])


def test_detect_with_a_synthetic_network():
    """detect() end to end with a fake network whose one confident anchor is known."""
    i = (8 * 16 + 8) * 2  # 16x16 map, cell (8, 8): canvas centre (136, 136)

    def apply(params, x):
        reg = jnp.zeros((x.shape[0], 896, 16)).at[:, i, :4].set(jnp.array([0.0, 0.0, 64.0, 32.0]))
        reg = reg.at[:, i, 4:].set(params)
        return reg, jnp.full((x.shape[0], 896, 1), -10.0).at[:, i].set(5.0)

    img = np.zeros((512, 1024, 3), np.uint8)  # scale 0.25, offset (0, 64)
    kps = jnp.tile(jnp.array([-8.0, -4.0]), 6)
    (d,) = detection.detect(apply, kps, img)
    np.testing.assert_allclose(d.box, [(104 - 0) * 4, (120 - 64) * 4, 168 * 4, (152 - 64) * 4], atol=1e-3)
    np.testing.assert_allclose(d.keypoints, [[128 * 4, (132 - 64) * 4]] * 6, atol=1e-3)
    assert d.score == pytest.approx(1 / (1 + np.exp(-5.0)), rel=1e-6)


# --- converter strictness ------------------------------------------------------------


def _files(model_json: Path) -> dict[str, bytes]:
    bins = [p for g in json.loads(model_json.read_text())["weightsManifest"] for p in g["paths"]]
    return {model_json.name: model_json.read_bytes(), **{b: (model_json.parent / b).read_bytes() for b in bins}}


@pytest.mark.weights
def test_converter_is_strict(human_model_json):
    from converters import tfjs_blazeface, tfjs_graph

    path = human_model_json("blazeface")
    files = _files(path)
    flat = tfjs_blazeface.convert(files, str(path), "blazeface")
    assert len(flat) == 2 + 3 * len(bf.BLOCKS) + 3 + 8
    # Depthwise: TF [3, 3, C, 1] -> [3, 3, 1, C], values unchanged.
    g = tfjs_graph.graph_from_files(files, "x")
    np.testing.assert_array_equal(flat["blocks/0/dw/kernel"][:, :, 0, :], g.weights["unknown_1"][:, :, :, 0])

    with pytest.raises(tfjs_graph.TfjsFormatError, match=r"truncated.*blazeface\.bin"):
        tfjs_blazeface.convert({**files, "blazeface.bin": files["blazeface.bin"][:-100]}, str(path), "blazeface")
    with pytest.raises(tfjs_graph.TfjsFormatError, match=r"not described.*blazeface\.bin"):
        tfjs_blazeface.convert({**files, "blazeface.bin": files["blazeface.bin"] + b"\0" * 8}, str(path), "blazeface")
    with pytest.raises(tfjs_graph.TfjsFormatError, match="blazeface.bin.*missing"):
        tfjs_blazeface.convert({"blazeface.json": files["blazeface.json"]}, str(path), "blazeface")
    # A graph that differs from the table (a stride-1 instead of stride-2 depthwise) names the node.
    spec = json.loads(files["blazeface.json"])
    for node in spec["modelTopology"]["node"]:
        if node["name"].endswith("depthwise_conv2d_7/depthwise"):
            node["attr"]["strides"]["list"]["i"] = ["1", "1", "1", "1"]
    with pytest.raises(ValueError, match="depthwise_conv2d_7/depthwise.*strides"):
        tfjs_blazeface.convert({**files, "blazeface.json": json.dumps(spec).encode()}, str(path), "blazeface")


@pytest.mark.weights
def test_back_variant_holds_the_same_weights(human_model_json):
    from converters import tfjs_blazeface

    a = tfjs_blazeface.convert(_files(human_model_json("blazeface")), "a", "blazeface")
    b = tfjs_blazeface.convert(_files(human_model_json("blazeface_back")), "b", "blazeface_back")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# --- real photos: parity with TF.js, detection --------------------------------------


@pytest.fixture(scope="module")
def model():
    from leam_jax.weights import load_apply

    return load_apply("blazeface")


@pytest.fixture(scope="module")
def wild(faces_dir):
    from leam_jax.face import decode

    items = decode.list_people(faces_dir / "wild_small")
    return [it.path for it in items], [decode.read_rgb(it.path) for it in items]


@pytest.fixture(scope="module")
def orl(faces_dir):
    from leam_jax.face import decode

    items = decode.list_people(faces_dir / "orl_att")
    return [it.path for it in items], [decode.read_rgb(it.path) for it in items]


@pytest.mark.weights
@pytest.mark.faces
def test_parity_with_tfjs_on_real_photos(model, wild, orl, faces_dir, tfjs_runtime, human_model_json):
    """Raw outputs of the untouched model.json in TF.js vs the Flax module, 16 letterboxed photos.

    On real photos the raw outputs reach |1e4| (logits of anchors over the black
    letterbox bands, and over flat areas), where one float32 ulp is ~1e-3; both
    runtimes are float32 and differ from a float64 evaluation by ~4e-4
    (regressors) and ~4e-3 (logits). So the bound is relative to each output's
    largest magnitude (a few ulp), plus absolute bounds on what detection uses:
    scores, and the regressors of anchors that see a face.
    """
    from converters import tfjs_blazeface

    paths = wild[0] + [str(faces_dir / "orl_att" / p) for p in ORL_PARITY]
    images = wild[1] + [orl[1][orl[0].index(p)] for p in paths[len(wild[0]):]]
    x, _ = detection.prepare(images)
    reg, logits = detection.run_network(*model, x)
    x = np.asarray(x)
    model_json = human_model_json("blazeface")
    # The graph's input and reshapes fix batch 1: one TF.js run per image, two at a time.
    with ThreadPoolExecutor(2) as pool:
        refs = list(pool.map(lambda xi: tfjs_runtime.run(model_json, xi[None]), x))
    n16 = 16 * 16 * 2
    ref = {kind: np.concatenate([np.concatenate([r[node] for node in tfjs_blazeface.OUTPUTS[kind]], 1) for r in refs])
           for kind in ("regressors", "logits")}
    assert ref["regressors"].shape == reg.shape and ref["logits"].shape == logits.shape
    for kind, ours in (("regressors", reg), ("logits", logits)):
        for k, node in enumerate(tfjs_blazeface.OUTPUTS[kind]):
            part = slice(0, n16) if k == 0 else slice(n16, None)
            diff, scale = np.abs(ours[:, part] - ref[kind][:, part]), np.abs(ref[kind][:, part]).max()
            worst = paths[int(diff.max(axis=(1, 2)).argmax())]
            print(f"{kind}{16 if k == 0 else 8} ({node}): max abs diff {diff.max():.2e} over {len(x)} images "
                  f"(worst {Path(worst).name}), max |ref| {scale:.1f}, ratio {diff.max() / scale:.1e}")
            assert diff.max() <= 2e-6 * scale
    sigmoid = lambda t: 0.5 * (1.0 + np.tanh(t[..., 0].astype(np.float64) / 2.0))
    score_ref = sigmoid(ref["logits"])
    score_diff = np.abs(sigmoid(logits) - score_ref).max()
    faces = score_ref > 0.05
    reg_diff = np.abs(reg - ref["regressors"])[faces].max()
    print(f"scores: max abs diff {score_diff:.1e}; regressors of the {faces.sum()} anchors scoring > 0.05: "
          f"max abs diff {reg_diff:.1e} px")
    assert score_diff <= 1e-5 and reg_diff <= PARITY_ATOL * 10
    # The detector's outputs as detection uses them, in the units it reports them (scores in
    # [0, 1]; box and keypoint offsets as fractions of the 256 px input): within 1e-4.
    print(f"decoded: scores {score_diff:.1e}, face-anchor boxes/keypoints {reg_diff / detection.INPUT_SIZE:.1e} "
          "of the input side")
    assert max(score_diff, reg_diff / detection.INPUT_SIZE) <= PARITY_ATOL


@pytest.mark.weights
@pytest.mark.faces
def test_detects_a_face_in_every_wild_photo(model, wild):
    paths, images = wild
    dets = detection.detect_many(*model, images)
    for path, img, ds in zip(paths, images, dets):
        assert ds, f"no face found in {path}"
        d = ds[0]
        h, w = img.shape[:2]
        assert 0.01 * w * h < d.area < 0.6 * w * h, (path, d.box)
        (x1, y1, x2, y2), eyes = d.box, d.keypoints[:2]
        assert ((eyes >= [x1, y1]) & (eyes <= [x2, y2])).all(), (path, d.box, eyes)
        assert eyes[0, 0] < eyes[1, 0], f"{path}: the subject's right eye should be on the image left"
        assert d.score > 0.8, (path, d.score)
    print("wild: faces per photo", {Path(p).parent.name + "/" + Path(p).name: len(ds) for p, ds in zip(paths, dets)})


@pytest.mark.weights
@pytest.mark.faces
def test_detects_faces_in_orl(model, orl):
    paths, images = orl
    assert len(images) == 400
    dets = detection.detect_many(*model, images)
    misses = [str(Path(p).relative_to(Path(p).parents[1])) for p, ds in zip(paths, dets) if not ds]
    rate = 1 - len(misses) / len(images)
    print(f"orl_att: face found in {rate:.2%} of {len(images)} images; misses: {misses}")
    assert rate >= 0.98
    for p, ds in zip(paths, dets):
        if ds:
            (x1, y1, x2, y2), eyes = ds[0].box, ds[0].keypoints[:2]
            assert ((eyes >= [x1, y1]) & (eyes <= [x2, y2])).all(), (p, ds[0].box, eyes)


@pytest.mark.weights
@pytest.mark.faces
@pytest.mark.dlib
def test_boxes_contain_dlib_eye_points(model, wild, dlib_landmarker):
    """dlib's 5-point eye corners (independent runtime) lie in the BlazeFace box, and the
    BlazeFace eye keypoints sit near the dlib eye centres (within 25% of the eye distance)."""
    detector, predictor = dlib_landmarker
    paths, images = wild
    dets = detection.detect_many(*model, images)
    worst = 0.0
    for path, img, ds in zip(paths, images, dets):
        faces = detector(img, 0) or detector(img, 1)
        assert faces, f"dlib found no face in {path}"
        shape = predictor(img, faces[0])
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], float)
        # dlib: 0-1 image-right eye corners, 2-3 image-left eye corners.
        left_img_eye, right_img_eye = pts[2:4].mean(0), pts[0:2].mean(0)
        match = min(ds, key=lambda d: np.linalg.norm(d.keypoints[0] - left_img_eye))
        x1, y1, x2, y2 = match.box
        assert ((pts[:4] >= [x1, y1]) & (pts[:4] <= [x2, y2])).all(), (path, match.box, pts[:4])
        iod = np.linalg.norm(right_img_eye - left_img_eye)
        err = max(np.linalg.norm(match.keypoints[0] - left_img_eye), np.linalg.norm(match.keypoints[1] - right_img_eye)) / iod
        worst = max(worst, err)
        assert err < 0.25, (path, err)
    print(f"BlazeFace eye keypoints vs dlib eye centres: worst {worst:.3f} of the eye distance")


@pytest.mark.parametrize("shape", [(300, 451, 3), (40, 30, 3), (256, 100, 3)])
def test_letterbox_resize_equals_jax_image_resize(shape):
    """The numpy letterbox resize is jax.image.resize(linear, antialias) without a compile per size."""
    img = np.random.default_rng(sum(shape)).integers(0, 256, shape).astype(np.uint8)
    canvas, lb = detection.letterbox(img)
    h, w = shape[:2]
    nw, nh = round(w * lb.scale[0]), round(h * lb.scale[1])
    ref = np.clip(np.asarray(jax.image.resize(jnp.asarray(img, jnp.float32), (nh, nw, 3), "linear", antialias=True)), 0, 255)
    ox, oy = int(lb.offset[0]), int(lb.offset[1])
    np.testing.assert_allclose(np.asarray(canvas)[oy:oy + nh, ox:ox + nw], ref, atol=1e-2)

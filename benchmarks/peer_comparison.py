"""Our LEAM beside PyTorch peers on the same dlib ResNet and weights, measured side by side in one run.

    pip install -e '.[bench]'     # captum, pytorch-grad-cam (grad-cam), torch
    python benchmarks/peer_comparison.py [--batch 32] [--repeats 5] [--threads 0]

The PyTorch network is built here from our converted dlib weights (conv kernels
HWIO -> OIHW, each per-channel affine folded into its conv, fc kernel transposed):
the same layers as ``leam_jax.models.dlib_resnet`` (no padding on strided convs,
average-pool skip, dlib's zero-padded add, global mean pool). Every row explains
the same seeded batch of 150x150 RGB images in [0, 255] with the identity score
(cosine to a reference: the batch's own embeddings rolled by one, as
leam_throughput.py) at all 16 taps, Grad-CAM weighting, float32. Rows:

  ours_leam              core.leam_maps, all taps (jitted): one forward, one backward, maps, resize, overall;
  ours_fwd, ours_fwd_bwd our forward alone (compiled as the study's forward passes); forward + backward to the
                         input pixels;
  torch_fwd              the PyTorch forward alone (inference_mode);
  torch_onepass          hand-written: one forward keeping the 16 tap activations, one autograd.grad
                         for all of them, Grad-CAM maps, bilinear resize, normalise, overall map;
  captum                 captum LayerGradCam, one attribute() call per tap (relu_attributions=True),
                         then the same resize and normalisation;
  gradcam_lib_per_layer  pytorch-grad-cam GradCAM, one call per tap (its own min-max + cv2 resize);
  gradcam_lib_all        pytorch-grad-cam GradCAM, one call with all 16 taps as target layers.

Maps are checked against ours before anything is timed, as |peer - ours| / map
max per map; the run exits non-zero if the worst layer's median over images
exceeds MEDIAN_TOL or any map exceeds MAX_TOL (see there). Ours and the one-pass
maps are also compared with a float64 run of the torch network, to show how far
float32 rounding alone moves them. Parameters do not require gradients, so
captum and the one-pass row differentiate from the first tap on, as ours does;
pytorch-grad-cam hooks only tensors that require gradients, so its input does.
pytorch-grad-cam imports torchvision; where that fails (the torchvision wheels
for torch 2.13 are CUDA builds, whose operators do not load beside CPU torch)
its rows are skipped with the error, and nothing is patched. The torch rows run
channels_last (oneDNN's faster layout here).
Timings: one warm-up call per row, then --repeats rounds over all rows,
interleaved so that load from other work falls on every row alike; ms per batch
median [min-max], and the load average around them. torch gets --threads
threads (default os.cpu_count()); with fewer than the cores, the process is
pinned to that many cores, to which XLA:CPU sizes its own pool. On a machine
loaded by other work, more threads can be slower, torch's OpenMP threads more
so than XLA's pool: compare a run at --threads 1. ``ours_over_X`` is our LEAM's
images/s over X's (medians); ``ours_over_X_best`` the same from each row's
fastest round. The last line holds the headline figures as name=value
pairs (nan: row skipped).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leam_jax import core
from leam_jax.models import dlib_resnet as dr

# Tolerances on |peer - ours| / map max, per map. Measured at batch 32: the worst layer's median over
# images 5e-6 to 8e-6; the single worst map 2.5e-3 (2 threads) and 1.2e-2 (1 thread: oneDNN picks other
# kernels). Those few images sit where float rounding decides a ReLU or max-pool kink, or where
# Grad-CAM's channel weights (spatial means of gradients of both signs) nearly cancel: a float64 run of
# the same torch network moves such maps by 1.6e-2 from either float32 runtime (printed). Real pipeline
# changes move the median far more: bicubic instead of bilinear resize 0.19, align_corners=True 0.44,
# ReLU after the resize 0.45, nearest 0.71, layercam 3.2 (and the max by 0.27 or more).
MEDIAN_TOL = 1e-4
MAX_TOL = 0.1


# ---------------------------------------------------------------------------
# The dlib ResNet in PyTorch, from our params.


def _t(a) -> torch.Tensor:
    """A jax/numpy array as a (copied, writable) torch tensor."""
    return torch.tensor(np.asarray(a))


def _conv(conv: dict, affine: dict, stride: int) -> nn.Conv2d:
    """A conv with the following per-channel affine folded in: gamma * (W x + b) + beta."""
    kernel = _t(conv["kernel"]).permute(3, 2, 0, 1)  # HWIO -> OIHW
    gamma, beta = _t(affine["gamma"]), _t(affine["beta"])
    k = kernel.shape[-1]
    layer = nn.Conv2d(kernel.shape[1], kernel.shape[0], k, stride=stride, padding=k // 2 if stride == 1 else 0)
    layer.weight.data = (kernel * gamma[:, None, None, None]).contiguous()
    layer.bias.data = gamma * _t(conv["bias"]) + beta
    return layer


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib add_prev on NCHW: the smaller tensor zero-padded at the high end of C, H and W."""
    shape = [max(p, q) for p, q in zip(a.shape, b.shape)]

    def pad(t):
        return F.pad(t, (0, shape[3] - t.shape[3], 0, shape[2] - t.shape[2], 0, shape[1] - t.shape[1]))

    return pad(a) + pad(b)


class Block(nn.Module):
    def __init__(self, p: dict, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = _conv(p["conv1"], p["affine1"], 2 if down else 1)
        self.conv2 = _conv(p["conv2"], p["affine2"], 1)

    def forward(self, x):
        y = self.conv2(F.relu(self.conv1(x)))
        return F.relu(add_zero_padded(y, F.avg_pool2d(x, 2) if self.down else x))


class TorchDlib(nn.Module):
    """NCHW images in [0, 255] -> embeddings [B, 128]; ``forward(x, True)`` also returns the 16 taps."""

    def __init__(self, params: dict):
        super().__init__()
        self.register_buffer("mean", torch.tensor(dr.RGB_MEAN).view(1, 3, 1, 1))
        self.stem = nn.Sequential(_conv(params["stem_conv"], params["stem_affine"], 2), nn.ReLU())
        self.stem_pool = nn.MaxPool2d(3, 2)
        downs = [down and i == 0 for _, _, n, down in dr.STAGES for i in range(n)]
        self.blocks = nn.ModuleList(Block(params["blocks"][i], d) for i, d in enumerate(downs))
        self.fc = nn.Linear(256, dr.EMBEDDING_DIM, bias=False)
        self.fc.weight.data = _t(params["fc"]["kernel"]).T.contiguous()
        self.requires_grad_(False)

    def tap_layers(self) -> list[nn.Module]:
        return [self.stem, self.stem_pool, *self.blocks]

    def forward(self, x, with_taps: bool = False):
        acts = [self.stem((x - self.mean) / dr.RGB_SCALE)]
        if with_taps and not acts[0].requires_grad:
            acts[0].requires_grad_()  # differentiate from the first tap on, as leam_maps does
        acts.append(self.stem_pool(acts[0]))
        for block in self.blocks:
            acts.append(block(acts[-1]))
        emb = self.fc(acts[-1].mean(dim=(2, 3)))
        return (emb, acts) if with_taps else emb


# ---------------------------------------------------------------------------
# Maps in PyTorch: the same math as core.layer_map / resize_maps / normalize_maps / overall_map.


def identity_score(emb: torch.Tensor, refs_hat: torch.Tensor) -> torch.Tensor:
    return (F.normalize(emb, dim=-1) * refs_hat).sum(-1)


def gradcam_map(grad: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] x2 -> [B, H, W]: ReLU(sum_c mean_hw(grad) * act)."""
    return F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1))


def finish(raw: list[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw [B, h, w] maps per tap -> (per-layer [B, L, S, S], overall [B, S, S]), sum-normalised."""
    up = [F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] for m in raw]
    per_layer = normalize(torch.stack(up, 1).clamp_min(0))
    return per_layer, normalize(per_layer.mean(1))


def normalize(maps: torch.Tensor) -> torch.Tensor:
    total = maps.sum(dim=(-2, -1), keepdim=True)
    bad = ~(total > 1e-12) | ~torch.isfinite(total)
    return torch.where(bad, 0.0, maps / torch.where(bad, 1.0, total))


def torch_onepass(model: TorchDlib, x: torch.Tensor, refs_hat: torch.Tensor):
    emb, acts = model(x, with_taps=True)
    grads = torch.autograd.grad(identity_score(emb, refs_hat).sum(), acts)
    raw = [gradcam_map(g, a) for g, a in zip(grads, acts)]
    return (*finish(raw, tuple(x.shape[2:])), raw)


def float64_raw(model: TorchDlib, x: torch.Tensor, refs_hat: torch.Tensor) -> list[torch.Tensor]:
    """The one-pass raw maps of a float64 copy of the network: how far float32 rounding moves both sides."""
    return torch_onepass(copy.deepcopy(model).double(), x.double(), refs_hat.double())[2]


def captum_maps(model: TorchDlib, x: torch.Tensor, refs_hat: torch.Tensor):
    from captum.attr import LayerGradCam

    score = lambda inp: identity_score(model(inp), refs_hat)
    raw = [LayerGradCam(score, layer).attribute(x, relu_attributions=True)[:, 0] for layer in model.tap_layers()]
    return (*finish(raw, tuple(x.shape[2:])), raw)


# ---------------------------------------------------------------------------
# pytorch-grad-cam (skipped with the reason where it does not import).


def import_gradcam_lib():
    """(GradCAM class, None) or (None, 'ErrorType: message')."""
    try:
        from pytorch_grad_cam import GradCAM
    except Exception as e:  # noqa: BLE001 - any import failure is a reason to skip, reported verbatim
        return None, f"{type(e).__name__}: {e}"
    return GradCAM, None


class CosineTarget:
    """pytorch-grad-cam target: one image's embedding row [D] -> cosine to its reference."""

    def __init__(self, ref_hat: torch.Tensor):
        self.ref_hat = ref_hat

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return (F.normalize(output, dim=-1) * self.ref_hat).sum()


def gradcam_lib_maps(gradcam_cls, model: TorchDlib, x: torch.Tensor, refs_hat: torch.Tensor, layers) -> np.ndarray:
    """One GradCAM call with ``layers`` as target layers -> [B, S, S] (min-max scaled, cv2-resized)."""
    targets = [CosineTarget(r) for r in refs_hat]
    with gradcam_cls(model=model, target_layers=list(layers)) as cam:
        return cam(input_tensor=x, targets=targets)


def gradcam_lib_like(raw: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's documented post-processing applied to raw maps [B, h, w] per layer -> [B, S, S].

    Per layer: min-max scale (``/(1e-7 + max)``), bilinear resize; then the mean over layers, min-max again.
    """
    def scale(m):
        m = m - m.min(axis=(-2, -1), keepdims=True)
        return m / (1e-7 + m.max(axis=(-2, -1), keepdims=True))

    up = [F.interpolate(torch.from_numpy(scale(m))[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
          for m in raw]
    return scale(torch.stack(up, 1).mean(1).numpy())


# ---------------------------------------------------------------------------
# Checks and timing.


def rel_diffs(a, b) -> np.ndarray:
    """Per map (the last two axes): max |a - b| / max |b|; 0 where both are all zero. [B, L] for
    per-layer maps, [B] for overall maps, or a list over layers of [B, h, w] (stacked as [B, L])."""
    if isinstance(a, list | tuple):
        return np.stack([rel_diffs(p, q) for p, q in zip(a, b)], axis=1)
    a, b = (np.asarray(t.detach() if isinstance(t, torch.Tensor) else t, np.float64) for t in (a, b))
    num = np.abs(a - b).max(axis=(-2, -1))
    return np.where(num == 0, 0.0, num / np.maximum(np.abs(b).max(axis=(-2, -1)), 1e-30))


def summary(d: np.ndarray) -> tuple[float, float]:
    """(worst layer's median over images, max over all maps) of per-map diffs [B] or [B, L]."""
    return float(np.median(d.reshape(d.shape[0], -1), axis=0).max()), float(d.max())


def spread_all(fns: dict, repeats: int) -> dict[str, tuple[float, float, float]]:
    """{row: (median, min, max) seconds}: one warm-up call each, then ``repeats`` rounds over all rows
    (interleaved, so load from other work on the machine falls on every row alike)."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            times[k].append(time.perf_counter() - t)
    return {k: (statistics.median(v), min(v), max(v)) for k, v in times.items()}


def setup(batch: int):
    from flax import nnx

    from leam_jax import weights

    m = weights.load("dlib_resnet")
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (batch, 150, 150, 3)), jnp.float32)
    emb = core.jit(lambda x: m.apply(m.params, x)[0])(images)
    refs = core.l2_normalize(jnp.roll(emb, 1, axis=0))
    # channels_last: oneDNN's faster layout here (1 thread, batch 8: 53-67 ms vs 60-162 ms per forward).
    model = TorchDlib(nnx.to_pure_dict(m.params)).eval().to(memory_format=torch.channels_last)
    x = _t(images).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    return m, images, refs, model, x, _t(refs)


def our_fns(m, refs):
    apply, taps = m.apply, m.taps
    score = lambda e: core.identity_score(e, refs)
    leam = core.jit(lambda p, x: core.leam_maps(apply, p, x, target="identity", references=refs, taps=taps))
    fwd = core.jit(lambda p, x: apply(p, x)[0], cpu_options=core.FORWARD_CPU_OPTIONS)  # as the study's forwards
    fwd_bwd = core.jit(lambda p, x: jax.grad(lambda x: jnp.sum(score(apply(p, x)[0])))(x))

    def raw(p, x):
        _, _, acts, grads = core.tap_gradients(apply, p, x, score, taps)
        return [core.layer_map(grads[t], acts[t], "gradcam") for t in taps]

    return leam, fwd, fwd_bwd, core.jit(raw)


def check_maps(ours, our_raw, onepass, cap, lib_per_layer, lib_all) -> dict[str, tuple[float, float]]:
    """Every comparison with ours: {check: (worst layer's median, max)} of per-map diffs."""
    per_layer, overall = np.asarray(ours.per_layer), np.asarray(ours.overall)
    out = {}
    for name, (p, o, r) in (("torch_onepass", onepass), ("captum", cap)):
        out |= {f"{name} raw (layer res)": rel_diffs(r, our_raw), f"{name} per-layer": rel_diffs(p, per_layer),
                f"{name} overall": rel_diffs(o, overall)}
    if lib_per_layer is not None:
        size = per_layer.shape[-2:]
        raw = [np.asarray(r) for r in our_raw]
        out["gradcam_lib per-layer"] = np.stack([rel_diffs(lib_per_layer[:, i], gradcam_lib_like([r], size))
                                                 for i, r in enumerate(raw)], axis=1)
        out["gradcam_lib all layers"] = rel_diffs(lib_all, gradcam_lib_like(raw, size))
    return {k: summary(v) for k, v in out.items()}


def row(name: str, t: tuple[float, float, float] | None, batch: int) -> float:
    if t is None:
        print(f"{name:<24} {'skipped':>10}")
        return float("nan")
    med, lo, hi = t
    print(f"{name:<24} {med * 1e3:10.1f} [{lo * 1e3:.1f}-{hi * 1e3:.1f}] {batch / med:10.1f}")
    return batch / med


def run_checks(ours, our_raw, model, x, refs_hat, lib) -> tuple[tuple[float, float], dict[str, float]]:
    """Print every map check; exit non-zero past the tolerances. Returns ((median, max), float64 max diffs)."""
    onepass = torch_onepass(model, x, refs_hat)
    diffs = check_maps(ours, our_raw, onepass, captum_maps(model, x, refs_hat), *lib)
    print("|peer - ours| / map max, per map: worst layer's median over images, max over all maps")
    for k, (med, mx) in diffs.items():
        print(f"  {k:<31} {med:.2e}  {mx:.2e}")
    ref64 = float64_raw(model, x, refs_hat)
    f64 = {k: summary(rel_diffs(v, ref64)) for k, v in (("ours", our_raw), ("torch", onepass[2]))}
    for k, (med, mx) in f64.items():
        print(f"  {k + ' raw vs float64 torch raw':<31} {med:.2e}  {mx:.2e}")
    worst = (max(v[0] for v in diffs.values()), max(v[1] for v in diffs.values()))
    if not (worst[0] <= MEDIAN_TOL and worst[1] <= MAX_TOL):
        raise SystemExit(f"maps differ from ours: median {worst[0]:.2e} (tolerance {MEDIAN_TOL:g}), "
                         f"max {worst[1]:.2e} (tolerance {MAX_TOL:g}) of the map max")
    return worst, {k: v[1] for k, v in f64.items()}


def set_threads(n: int) -> int:
    """torch gets n threads; with n below the core count the process is pinned to n cores, which XLA:CPU
    (not yet started: core.jit starts the backend on first call) then sizes its own pool to."""
    cores = sorted(os.sched_getaffinity(0))
    if n < len(cores):
        os.sched_setaffinity(0, cores[:n])
    torch.set_num_threads(n)
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="threads for both runtimes (0: os.cpu_count())")
    args = ap.parse_args()
    threads = set_threads(args.threads or os.cpu_count())

    m, images, refs, model, x, refs_t = setup(args.batch)
    leam, fwd, fwd_bwd, raw = our_fns(m, refs)
    gradcam_cls, skip = import_gradcam_lib()
    layers = model.tap_layers()
    x_grad = x.clone().requires_grad_()  # pytorch-grad-cam hooks only tensors that require gradients

    def lib_per_layer():
        return np.stack([gradcam_lib_maps(gradcam_cls, model, x_grad, refs_t, [la]) for la in layers], 1)

    def lib_all():
        return gradcam_lib_maps(gradcam_cls, model, x_grad, refs_t, layers)

    def torch_fwd():
        with torch.inference_mode():
            return model(x)

    print(f"dlib ResNet, batch {args.batch}, {len(m.taps)} taps, float32, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, XLA:CPU (its own pool) on {len(os.sched_getaffinity(0))} of "
          f"{os.cpu_count()} cores, median [min-max] of {args.repeats} interleaved rounds")
    if skip:
        print(f"pytorch-grad-cam skipped, import failed: {skip}")
    lib = (lib_per_layer(), lib_all()) if gradcam_cls else (None, None)
    worst, f64 = run_checks(leam(m.params, images), raw(m.params, images), model, x, refs_t, lib)

    rows = {
        "ours_leam": lambda: leam(m.params, images),
        "ours_fwd": lambda: fwd(m.params, images),
        "ours_fwd_bwd": lambda: fwd_bwd(m.params, images),
        "torch_fwd": torch_fwd,
        "torch_onepass": lambda: torch_onepass(model, x, refs_t)[0],
        "captum": lambda: captum_maps(model, x, refs_t)[0],
    }
    if gradcam_cls:
        rows |= {"gradcam_lib_per_layer": lib_per_layer, "gradcam_lib_all": lib_all}
    load = os.getloadavg()[0]
    spreads = spread_all(rows, args.repeats)
    print(f"load average (1 min) before / after timing: {load:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"{'row':<24} {'ms/batch':>10} {'[min-max]':<15} {'images/s':>6}")
    names = (*rows, *(k for k in ("gradcam_lib_per_layer", "gradcam_lib_all") if k not in rows))
    ips = {k: row(k, spreads.get(k), args.batch) for k in names}
    print_headline(ips, spreads, worst, f64, threads, args.batch)


def print_headline(ips: dict, spreads: dict, worst: tuple[float, float], f64: dict, threads: int, batch: int) -> None:
    lead = ips["ours_leam"]
    pairs = {f"{k}_ips": f"{v:.1f}" for k, v in ips.items()}
    pairs |= {f"ours_over_{k}": f"{lead / ips[k]:.2f}" for k in
              ("torch_onepass", "captum", "gradcam_lib_per_layer", "gradcam_lib_all")}
    # The same from the fastest round of each row: on a machine loaded by other work, the least disturbed.
    pairs |= {f"ours_over_{k}_best": f"{spreads[k][1] / spreads['ours_leam'][1]:.2f}" if k in spreads else "nan"
              for k in ("torch_onepass", "captum", "gradcam_lib_per_layer", "gradcam_lib_all")}
    pairs["leam_over_fwd_bwd"] = f"{spreads['ours_leam'][0] / spreads['ours_fwd_bwd'][0]:.3f}"
    pairs |= {"median_map_diff": f"{worst[0]:.2e}", "max_map_diff": f"{worst[1]:.2e}",
              "ours_f64_diff": f"{f64['ours']:.2e}",
              "torch_f64_diff": f"{f64['torch']:.2e}", "threads": threads, "batch": batch}
    print(" ".join(f"{k}={v}" for k, v in pairs.items()))


if __name__ == "__main__":
    main()

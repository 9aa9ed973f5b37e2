"""Random weights for the PyTorch source networks of the parity tests, at a trained network's scale.

``randomize`` draws every weight, bias, PReLU slope and batch-norm parameter,
measures the batch-norm running statistics on given inputs (as training
leaves them on its data), perturbs them, and measures the final BatchNorm1d
again behind the perturbed ones, so the embedding entries are O(1) on those
inputs, like a trained face model's before its L2 normalisation. (On
noise-calibrated statistics, face inputs give embeddings 5-50x larger, and
float32 rounding in any runtime grows with them.)

``refilled`` puts float64 weights into a converted model's params for the
x64 gradient checks, and ``EmbGrad`` gives embeddings and input gradients.
"""

from __future__ import annotations


def randomize(net, seed: int = 0, inputs=None, size: int = 160):
    """Random weights, BN running statistics (calibrated, then perturbed), biases, PReLU slopes; eval mode.

    Conv/linear weights N(0, 1/fan_in), biases 0.1 N(0, 1), BN gammas
    1 + 0.2 N, betas 0.1 N, PReLU slopes U(0, 0.5). Running statistics are
    measured in train mode (dropout off) on ``inputs`` ([N, 3, size, size],
    already normalised; default 4 uniform-noise images), then perturbed
    (means + 0.1 N * std, variances * U(0.7, 1.3)); the final BatchNorm1d is
    then measured again in eval mode behind the perturbed ones (one variance
    pooled over its features, perturbed the same way), so the embedding
    entries are O(1) on ``inputs``.
    """
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    bns = [m for m in net.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d))]
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(0.5 * torch.rand(m.weight.shape, generator=g))
        for m in bns:
            m.weight.copy_(1.0 + 0.2 * torch.randn(m.num_features, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
        net.train()
        for m in net.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
        inputs_or_noise = torch.rand((4, 3, size, size), generator=g) * 2 - 1 if inputs is None else inputs.float()
        net(inputs_or_noise)
        for m in bns:
            m.momentum = 0.1
            m.running_mean.add_(0.1 * torch.randn(m.num_features, generator=g) * m.running_var.sqrt())
            m.running_var.mul_(0.7 + 0.6 * torch.rand(m.num_features, generator=g))
            m.num_batches_tracked.fill_(1000)
        net.eval()
        # The embedding batch norm again, in eval mode behind the perturbed ones: a trained one standardises
        # the features it actually receives.
        for m in bns:
            if isinstance(m, nn.BatchNorm1d):
                # One pooled scale for all features: a per-feature variance over a handful of inputs can be
                # tiny and would give its feature a gain no trained network has.
                x = _input_of(net, m, inputs_or_noise)
                var = x.var(0).mean()
                m.running_mean.copy_(x.mean(0) + 0.1 * torch.randn(m.num_features, generator=g) * var.sqrt())
                m.running_var.copy_(var * (0.7 + 0.6 * torch.rand(m.num_features, generator=g)))
    return net


def _input_of(net, module, inputs):
    """What ``module`` receives when ``net`` runs on ``inputs``."""
    seen = []
    hook = module.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        net(inputs)
    finally:
        hook.remove()
    return seen[0]


class EmbGrad:
    """JAX embeddings [B, D] and d sum_b emb[b, component] / d images, one compile per dtype
    (the JAX side of the parity tests against PyTorch / ONNX Runtime)."""

    def __init__(self, component: int):
        self.component = component
        self._jitted: dict = {}

    def __call__(self, apply, params, images):
        import jax
        import jax.numpy as jnp
        import numpy as np

        from leam_jax import core

        key = images.dtype
        if key not in self._jitted:
            def f(p, x):
                emb = apply(p, x)[0]
                return emb[:, self.component].sum(), emb

            self._jitted[key] = core.jit(jax.value_and_grad(f, argnums=1, has_aux=True))
        (_, emb), grad = self._jitted[key](params, jnp.asarray(images))
        return np.asarray(emb), np.asarray(grad)


def refilled(params, flat):
    """A copy of an ``nnx.State`` with every leaf replaced by ``flat["a/b/c"]`` in that array's own
    dtype (float64 weights for the x64 gradient checks, which strict loading would refuse). Call
    under ``jax.enable_x64(True)``."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    def nested(target, prefix=""):
        return {k: (nested(v, f"{prefix}{k}/") if isinstance(v, dict) else jnp.asarray(flat[f"{prefix}{k}"]))
                for k, v in target.items()}

    out = jax.tree.map(lambda a: a, params)
    nnx.replace_by_pure_dict(out, nested(out.to_pure_dict()))
    return out

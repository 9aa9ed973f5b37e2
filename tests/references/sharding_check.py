"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=4 (by test_sharding.py).

Compares LEAM maps of a batch sharded over 4 CPU devices with the maps of the
same batch on one device, and counts traces over ragged batches.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from leam_jax import core
from tests.references.tiny_models import SIZE, nnx_model


def main() -> None:
    devices = jax.devices()
    assert len(devices) == 4, devices
    apply_fn, params = nnx_model()
    images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (8, SIZE, SIZE, 3)), jnp.float32)
    persons = jnp.array([3, 3, 1, 1, 1, 7, 2, 2])
    taps = ("c1", "c2", "c3")
    four = core.LeamRunner(apply_fn, params, batch_size=8, taps=taps, mesh=core.batch_mesh(devices))
    one = core.LeamRunner(apply_fn, params, batch_size=8, taps=taps, mesh=core.batch_mesh(devices[:1]))
    a, b = four(images, person_ids=persons), one(images, person_ids=persons)
    report = {
        "devices_used": len(a.overall.sharding.device_set),
        "max_diff_overall": float(np.abs(np.asarray(a.overall) - np.asarray(b.overall)).max()),
        "max_diff_per_layer": float(np.abs(np.asarray(a.per_layer) - np.asarray(b.per_layer)).max()),
        "used_self_equal": bool((np.asarray(a.used_self) == np.asarray(b.used_self)).all()),
    }
    for n in (5, 8, 3, 1):
        part = four(images[:n], person_ids=persons[:n])
        ref = one(images[:n], person_ids=persons[:n])
        report["max_diff_overall"] = max(report["max_diff_overall"], float(np.abs(np.asarray(part.overall) - np.asarray(ref.overall)).max()))
    report["traces_four"] = four.trace_count
    report["traces_one"] = one.trace_count
    print(json.dumps(report))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

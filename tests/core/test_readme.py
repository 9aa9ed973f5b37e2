"""The README's code examples run as they are and print what their comments say."""

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _examples():
    for i, code in enumerate(BLOCKS):
        marks = [pytest.mark.weights] if "leam_jax.weights" in code else []
        framework = next((f for f in ("nnx", "linen", "haiku") if f in code), "pretrained")
        yield pytest.param(code, id=f"{i}-{framework}", marks=marks)


def test_readme_has_an_example_per_framework():
    text = "\n".join(BLOCKS)
    assert len(BLOCKS) >= 4
    for needle in ("from_nnx", "from_linen", "from_haiku", "leam_jax.weights import load"):
        assert needle in text, needle


@pytest.mark.parametrize("code", list(_examples()))
def test_readme_example_runs(code):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    printed = out.getvalue().strip()
    # Every example ends with print(...)  # <what it prints>: the comment is the expected output.
    expected = re.findall(r"print\(.*\)\s+# (.*)$", code, flags=re.M)[-1]
    assert printed == expected.strip()

"""The layering of the ops: kernels/ (shipped as mcvd.kernels) is a leaf.

kernels/<op>.py holds Triton kernels and their triton_op launchers and imports
nothing from mcvd: mcvd/ops/<op>.py imports it (on first use of the Triton
backend) and makes every Python registration of the op, so a kernel module
never reaches back into the layer that loads it.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mcvd.kernels
from mcvd.ops import _triton

KERNELS = Path(mcvd.kernels.__path__[0])


def _mcvd_imports(path: Path) -> list[str]:
    """Every import in the file that reaches mcvd: `import mcvd...`, `from mcvd... import`,
    or a relative import that climbs out of the kernels package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name == "mcvd" or a.name.startswith("mcvd.")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level > 1 or (node.level == 0 and (module == "mcvd" or module.startswith("mcvd."))):
                found.append(f"from {'.' * node.level}{module} import {', '.join(a.name for a in node.names)}")
    return [f"{path.name}:{line}" for line in found]


def test_kernels_import_nothing_from_mcvd():
    files = sorted(KERNELS.glob("*.py"))
    assert {"spatin_norm.py", "attention.py", "reverse_step.py"} <= {f.name for f in files}, files
    bad = [imp for f in files for imp in _mcvd_imports(f)]
    assert not bad, f"kernels/ must import nothing from mcvd: {bad}"


def test_the_check_sees_every_form_of_import(tmp_path):
    """The checker itself: each form that reaches mcvd is caught, the forms that do not pass."""
    src = tmp_path / "k.py"
    src.write_text("import torch\nimport mcvd\nimport mcvd.ops as o\nfrom mcvd.ops import _backend\n"
                   "from mcvd import ops\nfrom .. import ops\nfrom ..ops import x\nfrom ._dtypes import y\n"
                   "from . import z\nimport mcvdx\n")
    assert [s.split(":", 1)[1] for s in _mcvd_imports(src)] == [
        "import mcvd", "import mcvd.ops", "from mcvd.ops import _backend", "from mcvd import ops",
        "from .. import ops", "from ..ops import x"]


def test_the_dtype_rule_imports_no_triton():
    """mcvd.ops imports mcvd.kernels._dtypes at import time: it must not pull in triton."""
    code = "import sys, mcvd.kernels._dtypes, mcvd.ops; print('triton' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "False", out


def test_load_imports_and_registers_once(monkeypatch):
    """_triton.load imports mcvd.kernels.<op> and hands it to `register` on the
    first call only (shown on _dtypes, the kernels module that needs no triton)."""
    monkeypatch.setattr(_triton, "_LOADED", {})
    calls = []
    first = _triton.load("_dtypes", calls.append)
    second = _triton.load("_dtypes", calls.append)
    assert first is second is sys.modules["mcvd.kernels._dtypes"]
    assert calls == [first]


def test_a_failed_registration_is_retried(monkeypatch):
    """A `register` that raises leaves the op unloaded, so the next call registers again."""
    monkeypatch.setattr(_triton, "_LOADED", {})

    def broken(module):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _triton.load("_dtypes", broken)
    calls = []
    _triton.load("_dtypes", calls.append)
    assert len(calls) == 1

"""Nothing outside mlxlora/backends/ imports mlx, torch or textual at module level."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import mlxlora

HEAVY = ("mlx.", "mlx_lm", "torch", "textual", "transformers")


def core_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(mlxlora.__path__, "mlxlora.")]
    return [n for n in names if not n.startswith("mlxlora.backends.") and n != "mlxlora.__main__"]


def test_every_module_outside_backends_imports_no_framework():
    modules = core_modules()
    assert "mlxlora.engine" in modules and "mlxlora.cli" in modules
    code = (
        f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m == 'mlx' or m.startswith({HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

"""Nothing outside mlxlora/backends/ imports mlx, torch or transformers at module level, and
only the TUI imports textual (so `mlxlora --help` and the engine stay light)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import mlxlora

FRAMEWORKS = ("mlx.", "mlx_lm", "torch", "transformers")
HEAVY = (*FRAMEWORKS, "textual")


def modules(prefix: str = "mlxlora.") -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(mlxlora.__path__, "mlxlora.")]
    return [n for n in names if n.startswith(prefix) and n != "mlxlora.__main__"]


def imported_after(names: list[str], heavy: tuple[str, ...]) -> list[str]:
    code = (
        f"import sys, importlib\nfor m in {names!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m == 'mlx' or m.startswith({heavy!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip())


def test_core_imports_no_framework_and_no_textual():
    core = [
        n
        for n in modules()
        if not n.startswith(("mlxlora.backends.", "mlxlora.tui.")) and n != "mlxlora.tui"
    ]
    assert "mlxlora.engine" in core and "mlxlora.cli" in core
    assert imported_after(core, HEAVY) == []


def test_tui_imports_no_framework():
    """On a 16 GB Mac every megabyte the app holds is taken from training."""
    tui = modules("mlxlora.tui")
    assert "mlxlora.tui.app" in tui
    assert imported_after(tui, FRAMEWORKS) == []

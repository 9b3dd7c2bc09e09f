"""The statistical core never imports torch or transformers (DESIGN.md: only inference/ may)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_core_modules_do_not_import_torch():
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import refusalstats
        names = [m.name for m in pkgutil.walk_packages(refusalstats.__path__, "refusalstats.")
                 if not m.name.startswith("refusalstats.inference")]
        for name in names:
            importlib.import_module(name)
        heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        print(len(names), heavy)
        sys.exit(1 if heavy else 0)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    n_modules = int(res.stdout.split()[0])
    assert n_modules >= 15  # the walk really saw the core (regression/, reporting/, ...)

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


def test_core_never_imports_the_inference_part():
    """DESIGN.md: inference depends on the core, never the other way round (#23). No module
    under src/refusalstats names refusalstats.inference in an import, lazy ones included
    (the judge detector and the design/generate/collect commands are found through entry
    points), and importing every core module leaves it unloaded."""
    import ast
    from pathlib import Path

    import refusalstats

    root = Path(refusalstats.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if "inference" in path.relative_to(root).parts:
            continue  # the inference part maps into the package namespace
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                if node.level:  # relative: .inference / ..inference
                    names = [f"refusalstats.{node.module or ''}"] + [
                        f"refusalstats.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                names = [str(node.args[0].value)]
            else:
                continue
            if any(n == "refusalstats.inference" or n.startswith("refusalstats.inference.")
                   for n in names):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == [], offenders
    assert len(list(root.rglob("*.py"))) >= 15  # the walk saw the core
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import refusalstats
        for m in pkgutil.walk_packages(refusalstats.__path__, "refusalstats."):
            if not m.name.startswith("refusalstats.inference"):
                importlib.import_module(m.name)
        print(sorted(n for n in sys.modules if n.startswith("refusalstats.inference")))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"

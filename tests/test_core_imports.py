"""The statistical core never imports torch or transformers (DESIGN.md: only inference/ may)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest


@pytest.fixture(scope="module")
def fresh_import_of_the_core():
    """Every core module imported in a fresh interpreter (once for the module's tests: it
    imports PyMC, matplotlib and the rest, seconds of CPU): how many modules, and which of
    torch, transformers and refusalstats.inference.* ended up loaded."""
    code = textwrap.dedent("""
        import importlib, json, pkgutil, sys
        import refusalstats
        names = [m.name for m in pkgutil.walk_packages(refusalstats.__path__, "refusalstats.")
                 if not m.name.startswith("refusalstats.inference")]
        for name in names:
            importlib.import_module(name)
        print(json.dumps({"n": len(names),
                          "heavy": sorted(m for m in ("torch", "transformers") if m in sys.modules),
                          "inference": sorted(n for n in sys.modules
                                              if n.startswith("refusalstats.inference"))}))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_core_modules_do_not_import_torch(fresh_import_of_the_core):
    assert fresh_import_of_the_core["heavy"] == []
    assert fresh_import_of_the_core["n"] >= 15  # the walk really saw the core (regression/, reporting/, ...)


def test_core_never_imports_the_inference_part(fresh_import_of_the_core):
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
    assert fresh_import_of_the_core["inference"] == []

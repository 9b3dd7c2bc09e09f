"""``python -m refusalstats._precompile`` (run by ``make install``) reaches every kernel."""

from __future__ import annotations

import re
from pathlib import Path

from numba.core.registry import CPUDispatcher

from refusalstats import _precompile

SRC = Path(_precompile.__file__).parent


def test_entry_kernels_are_the_kernels_the_package_calls():
    """The list the warm-up checks equals the kernels the source uses (``K.<kernel>``) (a new
    kernel call site must be added, or install-time compilation would silently miss it),
    and every entry is a numba dispatcher."""
    called = set()
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if re.search(r"import _kernels as K|from \.+ import _kernels as K", text):
            called |= {f"_kernels.{m}" for m in re.findall(r"\bK\.(\w+)", text)}
    bayes = {n for n in _precompile.ENTRY_KERNELS if n.startswith("bayes.")}
    assert called, "no kernel calls found: the pattern no longer matches the source"
    assert set(_precompile.ENTRY_KERNELS) - bayes == called
    for name, dispatcher in _precompile.kernels().items():
        assert isinstance(dispatcher, CPUDispatcher), name

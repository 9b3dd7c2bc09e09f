"""Running a refusal detector over the answers of a dump."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .errors import DumpError


def _resolve_detector(detector) -> tuple[Callable | None, str]:
    """The detector callable and its name; None (P2's own rule) stays None."""
    if detector is None:
        return None, "p2-rule"
    if isinstance(detector, str):
        from ..detect import detector as by_name

        return by_name(detector), detector
    if not callable(detector):
        raise TypeError("detector must be a detector name (e.g. 'paper'), a Detector or a callable")
    return detector, getattr(detector, "name", type(detector).__name__)


def _run_detector(det: Callable, texts: Sequence[str], label: str) -> np.ndarray:
    """0/1 (int8) refusal flags of ``det`` on ``texts``; a wrong shape names ``label``."""
    flags = np.asarray(det(list(texts)))
    if flags.shape != (len(texts),):
        raise DumpError(f"{label}: the detector returned shape {flags.shape} for {len(texts)} texts")
    return flags.astype(bool).astype(np.int8)


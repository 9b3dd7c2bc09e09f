"""Bayesian hierarchical (multilevel) logistic model of refusal, in PyMC.

Rooms: :mod:`.priors` (default priors and their checks), :mod:`.model` (the formula,
collapsing rows to binomial patterns, the PyMC model and the samplers, and the entry
point :func:`hierarchical`), :mod:`.laplace` (the nested Laplace approximation),
:mod:`.results` (:class:`HierarchicalResult`). Its figures live in
:mod:`refusalstats.plot`.
"""

from .model import (
    AUTO_CENTER_INFO,
    AUTO_CENTER_RATIO,
    AUTO_LAPLACE_PATTERNS,
    HierarchicalModel,
    fit_options,
    hierarchical,
)
from .priors import DEFAULT_PRIORS
from .results import ConvergenceWarning, HierarchicalResult

__all__ = [
    "AUTO_CENTER_INFO",
    "AUTO_CENTER_RATIO",
    "AUTO_LAPLACE_PATTERNS",
    "DEFAULT_PRIORS",
    "ConvergenceWarning",
    "HierarchicalModel",
    "HierarchicalResult",
    "fit_options",
    "hierarchical",
]

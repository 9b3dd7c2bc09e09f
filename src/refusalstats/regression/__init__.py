"""Formula logistic regression: MLE, ridge / lasso / elastic net, Firth; R-style results.

:func:`logit` is the entry point (re-exported as ``refusalstats.logit``); it returns a
:class:`LogitResults`. The maths is in ``docs/methods_logit.md``.
"""

from .model import LogitModel, LogitResults, SeparationWarning, logit

__all__ = ["LogitModel", "LogitResults", "SeparationWarning", "logit"]

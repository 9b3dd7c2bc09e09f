"""refusalstats: false refusal in language models, measured with honest uncertainty.

>>> import refusalstats as rs
>>> df = rs.simulate_paper(scale=0.05)
>>> rs.refusal_rates(df, by=["model", "task"])  # doctest: +SKIP
"""

from importlib.metadata import version as _version

from . import dumps, plot
from ._validation import ClusterNote
from .agreement import cochran_q, rank_agreement
from .bayes import ConvergenceWarning, HierarchicalResult, hierarchical
from .counts import collapse
from .design import PERSONAS, TASKS, TEMPLATES, Persona, Task, Template, sample_design
from .detect import detector, evaluate_detector
from .formula import FormulaError
from .labels import detector_card, join_labels, label_sample, read_labels, row_key
from .persona_disparity import disparity
from .ppi import (
    PPILogitResult,
    label_budget,
    ppi_disparity,
    ppi_effect,
    ppi_logistic,
    ppi_logit,
    ppi_mean,
    ppi_rates,
    rogan_gladen,
)
from .rates import persona_effect, refusal_rates
from .regression import LogitModel, LogitResults, SeparationWarning, logit
from .reporting import report
from .sensitivity import W2SensitivityResult, w2_sensitivity
from .simulate import simulate_items, simulate_paper
from .sources import read_responses, scan_columns
from .table import SchemaError, read_table, validate, write_responses

__version__ = _version("refusalstats")

__all__ = [
    "PERSONAS",
    "TASKS",
    "TEMPLATES",
    "ClusterNote",
    "ConvergenceWarning",
    "FormulaError",
    "HierarchicalResult",
    "LogitModel",
    "LogitResults",
    "PPILogitResult",
    "Persona",
    "SchemaError",
    "SeparationWarning",
    "Task",
    "Template",
    "W2SensitivityResult",
    "__version__",
    "cochran_q",
    "collapse",
    "detector",
    "detector_card",
    "disparity",
    "dumps",
    "evaluate_detector",
    "hierarchical",
    "join_labels",
    "label_budget",
    "label_sample",
    "logit",
    "persona_effect",
    "plot",
    "ppi_disparity",
    "ppi_effect",
    "ppi_logistic",
    "ppi_logit",
    "ppi_mean",
    "ppi_rates",
    "rank_agreement",
    "read_labels",
    "read_responses",
    "read_table",
    "refusal_rates",
    "report",
    "rogan_gladen",
    "row_key",
    "sample_design",
    "scan_columns",
    "simulate_items",
    "simulate_paper",
    "validate",
    "w2_sensitivity",
    "write_responses",
]

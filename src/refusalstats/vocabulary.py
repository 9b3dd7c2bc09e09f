"""Shared names: the values the table's columns use for settings and persona-free rows, and
the look every figure and the report page share (#23).

One home for words that several rooms compare against (``"persona-free"`` was a literal in
seven files) and for the colour palette and figure style that :mod:`refusalstats.plot` and
:mod:`refusalstats.reporting` both use. This module imports nothing else of the package.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "CATEGORICAL_COLOURS",
    "COLOUR_MAP",
    "CONTROL_GROUP",
    "FIGURE_RC",
    "MARKERS",
    "NO_PERSONA",
    "OKABE_ITO",
    "PERSONA",
    "PERSONA_FREE",
    "SETTINGS",
    "level_slug",
    "persona_mask",
    "persona_rows",
]

# ----------------------------------------------------------------------------------------
# values in the response table
# ----------------------------------------------------------------------------------------
#: ``setting`` of a prompt that gives the model a persona.
PERSONA = "persona"
#: ``setting`` of a prompt without a persona (P1's persona-free baseline).
PERSONA_FREE = "persona-free"
#: The two settings :func:`refusalstats.persona_effect` compares, persona first.
SETTINGS: tuple[str, str] = (PERSONA, PERSONA_FREE)
#: ``persona`` (and ``persona_group``) value on persona-free rows.
NO_PERSONA = "none"
#: ``persona_group`` of the control personas (:func:`refusalstats.disparity`'s ``control``).
CONTROL_GROUP = "control"


def persona_mask(table: pd.DataFrame) -> np.ndarray:
    """Lines (rows or counts) that have a persona: not persona-free, persona not ``"none"``.

    Parameters
    ----------
    table : DataFrame
        A response table or a table of counts; without ``setting`` or ``persona`` columns
        every line has a persona.

    Returns
    -------
    ndarray of bool

    Examples
    --------
    >>> t = pd.DataFrame({"setting": ["persona", "persona-free"], "persona": ["Man", "none"]})
    >>> persona_mask(t).tolist()
    [True, False]
    """
    keep = np.ones(len(table), dtype=bool)
    if "setting" in table.columns:
        keep &= (table["setting"].astype(str) != PERSONA_FREE).to_numpy()
    if "persona" in table.columns:
        keep &= (table["persona"].astype(str) != NO_PERSONA).to_numpy()
    return keep


def persona_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The lines with a persona (:func:`persona_mask`), unused persona categories removed.

    Parameters
    ----------
    table : DataFrame

    Returns
    -------
    DataFrame
    """
    out = table.loc[persona_mask(table)]
    if "persona" in out.columns and isinstance(out["persona"].dtype, pd.CategoricalDtype):
        out = out.assign(persona=out["persona"].cat.remove_unused_categories())
    return out


# ----------------------------------------------------------------------------------------
# the look of figures and the page
# ----------------------------------------------------------------------------------------
#: Okabe & Ito (2008) colour-blind-safe palette (black first).
OKABE_ITO: tuple[str, ...] = (
    "#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
)
#: Colours of categories (models, tasks) in figures: Okabe & Ito, blue first.
CATEGORICAL_COLOURS: tuple[str, ...] = (
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000", "#F0E442")
#: Markers paired with :data:`CATEGORICAL_COLOURS`.
MARKERS: tuple[str, ...] = ("o", "s", "D", "^", "v", "P", "X", "h")
#: Colour map of heatmaps.
COLOUR_MAP = "viridis"
#: Matplotlib settings of every figure (:func:`matplotlib.rc_context`).
FIGURE_RC: dict[str, object] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",
}


def level_slug(level) -> str:
    """A level as a column-name suffix: ``"persona-free"`` -> ``"persona_free"`` (effect columns)."""
    return "".join(ch if ch.isalnum() else "_" for ch in str(level)).strip("_").lower()

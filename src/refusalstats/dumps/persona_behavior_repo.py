"""De Araujo & Roth's (2024) published dump, ``peluz/persona-behavior`` (P2).

:func:`persona_behavior` turns the repository's persona x item refusal matrices
(``results/zero/<model>/<dataset>_refusals.csv``, control personas under
``results/control/zero/``), or its raw generations
(``results/zero/<model>/<folder>/<persona>.json``) re-classified with any refusalstats
detector, into the tidy response table. :func:`display_persona` gives the display form
of a stored persona name.

P2's folders and its baseline are put in the package's vocabulary (that of
:mod:`refusalstats.vocabulary`): every persona, control personas included, has
``setting = "persona"``; the baseline without a persona (row ``empty``) has
``setting = "persona-free"`` and ``persona = persona_group = "none"``, so that the
report compares persona with persona-free answers and no persona analysis counts the
baseline as a persona. What the dump itself says is kept: the stored persona name in
``persona_original``, P2's category in ``persona_category`` and P2's folder
(``"regular"`` / ``"control"``) in ``setting_original``.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..table import validate
from ..vocabulary import CONTROL_GROUP, NO_PERSONA, PERSONA, PERSONA_FREE
from .classify import _resolve_detector, _run_detector
from .download import (
    _is_url,
    _local,
    _raw_github,
    check_name,
    check_relative,
    fetch,
    inside,
    sha256_of,
    verify,
)
from .errors import DumpError, DumpNotFound
from .matrix import PersonaItemMatrix, parse_matrix

#: P2's datasets (file prefix -> what it is). The refusal matrices are
#: ``<prefix>_refusals.csv``.
P2_DATASETS: dict[str, str] = {
    "off": "offensiveness annotation of tweets (Likert 1-5)",
    "rac": "racism annotation of tweets (Likert 1-5)",
    "truthfulqa": "TruthfulQA, multiple choice",
    "mmlu": "MMLU, multiple choice",
    "bbq": "BBQ bias benchmark, multiple choice",
    "attitude": "attitude questionnaires (27 statements x 31 paraphrases, Likert)",
}

#: The model folders of the published repository, used when the root is a URL
#: (a web server cannot list folders).
P2_MODELS: tuple[str, ...] = (
    "gemma-2b-it",
    "gemma-7b-it",
    "Mistral-7B-Instruct-v0.2",
    "Mixtral-8x7B-Instruct-v0.1",
    "zephyr-7b-beta",
    "gpt-3.5-turbo-0125",
    "gpt-4-0125-preview",
)

#: P2 asks every question with one zero-shot prompt (no template variations), so the
#: ``prompt`` column of an imported P2 table holds this constant.
P2_PROMPT = "zero-shot"

#: Where the repository keeps the persona -> category mapping.
P2_CATEGORY_FILE = "data/persona_cat.json"

#: Category given to control personas (paraphrases of "a helpful assistant"): the
#: package's control group, the level :func:`refusalstats.disparity` takes as ``control``.
CONTROL_CATEGORY = CONTROL_GROUP

#: P2's row (and generation file) for the baseline prompt without a persona. Its rows are
#: imported as persona-free (``setting = "persona-free"``, ``persona = "none"``).
P2_BASELINE = "empty"

#: P2's folders: ``setting_original`` value -> folder under the root.
_P2_FOLDERS: dict[str, str] = {"regular": "results/zero", "control": "results/control/zero"}

# Generation folders per dataset. "off" and "rac" share the folder "toxicity": each
# JSON holds the offensiveness answers first, then the racism answers.
_GENERATION_FOLDERS: dict[str, str] = {
    "off": "toxicity",
    "rac": "toxicity",
    "truthfulqa": "truthfulqa",
    "mmlu": "mmlu",
    "bbq": "bbq",
    "attitude": "attitudes",
}
_ATTITUDE_EXTRA = "attitudes_extra"



def display_persona(name: str) -> str:
    """Display form of a persona name as stored in a dump.

    Underscores become spaces and a leading lower-case article (``a``, ``an``, ``the``)
    is dropped; case is kept (``an_Asian_person`` -> ``Asian person``). P2's baseline
    without persona (row ``empty``) becomes ``"none"``, the ``persona`` of persona-free
    rows throughout the package (:data:`refusalstats.vocabulary.NO_PERSONA`).

    Parameters
    ----------
    name : str
        The persona as the dump stores it (a file name or matrix row).

    Returns
    -------
    str
        The display name.

    Examples
    --------
    >>> display_persona("a_black_person")
    'black person'
    >>> display_persona("an_Asian_person"), display_persona("John_F._Kennedy")
    ('Asian person', 'John F. Kennedy')
    >>> display_persona("empty")
    'none'
    """
    if not isinstance(name, str):
        raise TypeError(f"persona names are strings, got {name!r}")
    if _is_baseline(name):
        return NO_PERSONA
    s = " ".join(name.replace("_", " ").split())
    s = re.sub(r"^(?:a|an|the) (?=\S)", "", s)
    return s


def _is_baseline(name: str) -> bool:
    """Whether a stored persona name is P2's baseline without persona (``empty``)."""
    return " ".join(name.replace("_", " ").split()) in ("", P2_BASELINE)


def _display_map(raw: Iterable[str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for r in raw:
        d = display_persona(r)
        if d in seen and seen[d] != r:
            raise DumpError(
                f"{where}: personas {seen[d]!r} and {r!r} both display as {d!r}; rename one "
                "of them in the dump so that persona names stay distinct"
            )
        seen[d] = r
        out[r] = d
    return out



class _Root:
    """A P2 repository root: a local folder or a base URL."""

    def __init__(self, root: str | Path, progress: bool,
                 checksums: Mapping[str, str] | None = None):
        self.progress = progress
        self.checksums = {str(k).strip("/"): v for k, v in dict(checksums or {}).items()}
        self.sha256: dict[str, str] = {}  # every file read: path under the root -> digest
        if _is_url(root):
            self.url: str | None = _raw_github(str(root))
            self.path: Path | None = None
            self.prefix = ""
        else:
            self.url = None
            p = Path(root).expanduser()
            if not p.exists():
                raise DumpNotFound(f"persona-behavior root '{p}' does not exist")
            if not p.is_dir():
                raise DumpError(
                    f"'{p}' is a file; pass the repository folder (the one holding results/ "
                    "and data/)"
                )
            if (p / "results" / "zero").is_dir():
                self.prefix = ""
            elif (p / "zero").is_dir() and p.name == "results":
                # the results/ folder itself was given; data/ is its sibling
                p, self.prefix = p.parent, ""
            else:
                found = sorted(str(x.relative_to(p)) for x in p.glob("**/*_refusals.csv"))[:3]
                hint = f" Found refusal matrices at {found}." if found else ""
                raise DumpError(
                    f"unknown layout under '{p}': expected P2's layout "
                    "results/zero/<model>/<dataset>_refusals.csv (and results/control/zero/... "
                    f"for control personas).{hint} Pass the repository root, or use "
                    "read_generic() for other layouts"
                )
            self.path = p

    def describe(self, rel: str) -> str:
        return f"{self.url}/{rel}" if self.url else str(self.path / rel)

    def get(self, rel: str) -> Path | None:
        """Local path of ``rel`` (downloaded when the root is a URL), or None if absent.

        A file pinned in ``checksums`` must have that SHA-256; every file read is
        recorded in ``sha256``.
        """
        check_relative(rel, self.url or str(self.path))
        pin = self.checksums.get(rel)
        if self.url is not None:
            try:
                p = fetch(f"{self.url}/{rel}", progress=self.progress, sha256=pin)
            except DumpNotFound:
                return None
        else:
            assert self.path is not None
            p = self.path / rel
            if not p.exists():
                return None
            inside(p, self.path, self.describe(rel))
            verify(p, pin, self.describe(rel))
        self.sha256[rel] = pin.lower().removeprefix("sha256:") if pin else sha256_of(p)
        return p

    def models(self, setting_dir: str) -> list[str] | None:
        if self.url is not None:
            return None
        assert self.path is not None
        d = self.path / setting_dir
        if not d.is_dir():
            return []
        return sorted(x.name for x in d.iterdir() if x.is_dir())

    def datasets(self, model_dir: str) -> list[str] | None:
        if self.url is not None:
            return None
        assert self.path is not None
        d = self.path / model_dir
        return sorted(
            x.name[: -len("_refusals.csv")] for x in d.glob("*_refusals.csv") if x.is_file()
        )

    def persona_files(self, folder: str) -> list[str] | None:
        if self.url is not None:
            return None
        assert self.path is not None
        d = self.path / folder
        if not d.is_dir():
            return []
        return sorted(x.name[:-5] for x in d.glob("*.json") if x.is_file())


def _load_categories(root: _Root, categories: str | Path | Mapping[str, str] | None
                     ) -> tuple[dict[str, str] | None, str]:
    if isinstance(categories, Mapping):
        return {str(k): str(v) for k, v in categories.items()}, "the categories mapping"
    if categories is not None:
        path = _local(categories, progress=root.progress)
        where = str(categories)
    else:
        path = root.get(P2_CATEGORY_FILE)
        where = root.describe(P2_CATEGORY_FILE)
        if path is None:
            return None, where
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DumpError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DumpError(f"{where}: expected a JSON object persona -> category name")
    return {str(k): v for k, v in data.items()}, where


def _check_categories(raw_personas: Iterable[str], cats: dict[str, str], where: str,
                      label: str) -> None:
    missing = [p for p in raw_personas if p not in cats and not _is_baseline(p)]
    if missing:
        raise DumpError(
            f"{label}: {len(missing)} persona(s) are missing from the category file {where}: "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}. Add them to the file, pass "
            "categories={...} with every persona, or categories=False to load without "
            "categories"
        )


def _category(raw: str, folder: str, cats: Mapping[str, str]) -> str:
    """P2's category of a persona: the control category in the control folder, the
    category file's entry otherwise (for the baseline, ``empty`` when the file has none)."""
    if _is_baseline(raw):
        return cats.get(raw, P2_BASELINE)
    return CONTROL_CATEGORY if folder == "control" else cats[raw]


def _vocabulary(raw: str, folder: str, cats: Mapping[str, str] | None
                ) -> dict[str, str]:
    """The package's ``setting`` (and ``persona_group``) of a stored persona of a folder."""
    base = _is_baseline(raw)
    out = {"setting": PERSONA_FREE if base else PERSONA}
    if cats is not None:
        out["persona_group"] = NO_PERSONA if base else _category(raw, folder, cats)
    return out


def _matrix_frame(mat: PersonaItemMatrix, *, model: str, dataset: str, setting: str,
                  names: Mapping[str, str], cats: Mapping[str, str] | None) -> pd.DataFrame:
    n_p, n_i = len(mat.personas), len(mat.items)
    w = mat.width
    per_p = n_i * w
    p_idx = np.repeat(np.arange(n_p), per_p)
    col_idx = np.tile(np.repeat(np.arange(n_i), w), n_p)
    sub_idx = np.tile(np.arange(w), n_p * n_i)
    items = np.asarray(mat.items, dtype=object)
    n = n_p * per_p
    frame: dict[str, Any] = {"model": _const_cat(model, n), "task": _const_cat(dataset, n)}
    frame["persona"] = _coded_cat([names[p] for p in mat.personas], p_idx)
    frame["persona_original"] = _coded_cat(list(mat.personas), p_idx)
    voc = [_vocabulary(p, setting, cats) for p in mat.personas]
    if cats is not None:
        frame["persona_category"] = _coded_cat([_category(p, setting, cats) for p in mat.personas],
                                               p_idx)
        frame["persona_group"] = _coded_cat([v["persona_group"] for v in voc], p_idx)
    frame["prompt"] = _const_cat(P2_PROMPT, n)
    frame["setting"] = _coded_cat([v["setting"] for v in voc], p_idx)
    frame["setting_original"] = _const_cat(setting, n)
    if w == 1:
        ids = items[col_idx]
        frame["item_id"] = _int_ids(ids) if all(isinstance(x, int) for x in mat.items) else ids.astype(str)
    else:
        if not all(isinstance(x, int) for x in mat.items):
            raise DumpError(f"{mat.label}: vector cells need integer item columns, got {mat.items[:3]}")
        stmt = items[col_idx].astype(np.int64)
        frame["item_id"] = _int_ids(stmt * w + sub_idx)
        frame["statement"] = stmt.astype(np.int32)
        frame["paraphrase"] = sub_idx.astype(np.int32)
    frame["refusal"] = mat.values.reshape(-1)
    return pd.DataFrame(frame)


def _int_ids(ids: np.ndarray) -> np.ndarray:
    """Item ids as int32 when they fit (P2's largest dataset has ~58,000 items)."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) and ids.min() >= np.iinfo(np.int32).min and ids.max() <= np.iinfo(np.int32).max:
        return ids.astype(np.int32)
    return ids


def _const_cat(value: str, n: int) -> pd.Categorical:
    return pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), categories=[value])


def _coded_cat(per_level: list[str], codes: np.ndarray) -> pd.Categorical:
    """Categorical of ``per_level[codes]`` without materialising the strings."""
    levels, inverse = np.unique(np.asarray(per_level, dtype=object), return_inverse=True)
    return pd.Categorical.from_codes(inverse[codes], categories=list(levels))


#: Columns the P2 loader stores as categoricals (concatenated with union_categoricals).
_P2_CATEGORICALS = ("model", "task", "persona", "persona_original", "persona_category",
                    "persona_group", "prompt", "setting", "setting_original")


def _object_cat(col: pd.Series) -> pd.Categorical:
    c = col.array if isinstance(col.dtype, pd.CategoricalDtype) else pd.Categorical(col)
    return pd.Categorical.from_codes(c.codes, categories=pd.Index(list(c.categories), dtype=object))


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate frames, merging categoricals level-by-level (levels in order of first
    appearance) instead of falling back to strings."""
    from pandas.api.types import union_categoricals

    cat_cols = [c for c in _P2_CATEGORICALS if all(c in f.columns for f in frames)]
    rest = pd.concat([f.drop(columns=cat_cols) for f in frames], ignore_index=True)
    out = {}
    for c in cat_cols:
        u = union_categoricals([_object_cat(f[c]) for f in frames])
        codes, uniques = pd.factorize(u)
        out[c] = pd.Categorical.from_codes(codes, categories=list(uniques))
    df = pd.DataFrame(out)
    for c in rest.columns:
        df[c] = rest[c].to_numpy() if rest[c].dtype != object else rest[c]
    order = [c for c in frames[0].columns] + [c for c in df.columns if c not in frames[0].columns]
    return df[order]


def _align(other: PersonaItemMatrix, ref: PersonaItemMatrix) -> np.ndarray:
    """``other``'s values in ``ref``'s persona and item order, or raise."""
    if set(other.personas) != set(ref.personas) or list(other.items) != list(ref.items) \
            or other.width != ref.width:
        only_o = sorted(set(other.personas) - set(ref.personas))[:3]
        only_r = sorted(set(ref.personas) - set(other.personas))[:3]
        raise DumpError(
            f"{other.label} does not match {ref.label}: personas only in the first {only_o}, "
            f"only in the second {only_r}; items {len(other.items)} vs {len(ref.items)}, "
            f"vector width {other.width} vs {ref.width}. Both must cover the same personas "
            "and items"
        )
    order = [other.personas.index(p) for p in ref.personas]
    return other.values[order].reshape(-1)


def _read_generation_file(path: Path, label: str) -> list[str]:
    from ..table import TableTooLarge, check_size

    try:
        check_size(path, label=label)
    except TableTooLarge as exc:
        raise DumpError(str(exc)) from None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DumpError(f"{label}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise DumpError(f"{label}: expected a JSON list of generations, got {type(data).__name__}")
    out: list[str] = []
    for i, g in enumerate(data):
        x = g
        if isinstance(x, list) and len(x) >= 1:
            x = x[0]
        if isinstance(x, dict):
            x = x.get("generated_text", x.get("text"))
        if not isinstance(x, str):
            raise DumpError(
                f"{label}, generation {i}: expected [{{\"generated_text\": ...}}] or a string, "
                f"got {json.dumps(g)[:80]}"
            )
        out.append(x)
    return out


# P2's rule: a hedge pattern counts as a refusal only when no answer can be extracted.
# Answer extraction, written here in our own terms: Likert datasets (attitude, off,
# rac) give a digit 0-5; multiple-choice ones give an option letter (a lone letter,
# or one followed by '.', ',', ')', a space or a line break).
_LIKERT = re.compile(r"\b[0-5]\b")
_MC_LETTERS = {"mmlu": "A-D", "bbq": "A-C", "truthfulqa": "A-D"}


def _answer_found(texts: Sequence[str], dataset: str) -> np.ndarray:
    if dataset in ("attitude", "off", "rac"):
        rx = _LIKERT
    else:
        rng = _MC_LETTERS.get(dataset, "A-D")
        rx = re.compile(rf"(?:^\s*[{rng}]\s*$)|(?<![A-Za-z.])[{rng}](?=[.,)\n ])")
    return np.fromiter((rx.search(t) is not None for t in texts), dtype=bool, count=len(texts))


def _p2_rule(dataset: str) -> Callable[[Sequence[str]], np.ndarray]:
    from ..detect import HedgeDetector

    hedge = HedgeDetector(labels=None)

    def rule(texts: Sequence[str]) -> np.ndarray:
        return hedge(texts) & ~_answer_found(texts, dataset)

    return rule



def persona_behavior(
    root: str | Path,
    datasets: Sequence[str] | str | None = None,
    control: bool = False,
    source: str = "matrices",
    detector: Any = None,
    *,
    models: Sequence[str] | None = None,
    categories: str | Path | Mapping[str, str] | bool | None = None,
    hedges: bool = True,
    checksums: Mapping[str, str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Load de Araujo & Roth's (2024) published dump (``peluz/persona-behavior``).

    Parameters
    ----------
    root : str or Path
        The repository root (the folder holding ``results/`` and ``data/``), its
        ``results/`` folder, or a URL: ``https://github.com/peluz/persona-behavior``
        or a raw base such as
        ``https://raw.githubusercontent.com/peluz/persona-behavior/main``. URLs are
        downloaded once into :func:`cache_dir` with a progress bar.
    datasets : list of str or comma-separated str, optional
        Any of :data:`P2_DATASETS` (``off, rac, truthfulqa, mmlu, bbq, attitude``).
        Default: every dataset found. A dataset asked for by name must exist for every
        model loaded.
    control : bool
        Also load the 30 control personas (``results/control/zero/...``), with
        ``setting_original = "control"`` and ``persona_category = "control"``. The
        regular personas (and the baseline) always load, with
        ``setting_original = "regular"``.
    source : {"matrices", "generations"}
        ``"matrices"``: the published 0/1 refusal matrices ``<dataset>_refusals.csv``
        (plus ``<dataset>_hedges.csv`` as a ``hedge`` column when present).
        ``"generations"``: the raw generations, re-classified with ``detector``; the
        text goes into ``response`` and, where the published matrix exists, its flag
        into ``refusal_published``.
    detector : str, Detector or callable, optional
        For ``source="generations"``: a detector name for
        :func:`refusalstats.detect.detector` (``"paper"``, ``"xstest"``, ``"hedge"``,
        ``"default"``) or any callable from a list of strings to booleans. Default:
        P2's own rule (a hedge pattern, counted only when no answer — a Likert digit
        or an option letter — can be extracted).
    models : list of str, optional
        Model folders to load. Default: all folders found (for a URL root:
        :data:`P2_MODELS`).
    categories : path, mapping or False, optional
        Persona -> category mapping. Default: the repository's
        ``data/persona_cat.json`` when present (every regular persona must be in it);
        ``False`` loads without categories.
    hedges : bool
        With ``source="matrices"``, add the ``hedge`` column from ``_hedges.csv``.
    checksums : mapping of str to str, optional
        SHA-256 pins, file path under the root (``"results/zero/gemma-2b-it/off_refusals.csv"``)
        -> 64 hex digits. A pinned file that differs raises :class:`ChecksumError` (a
        cached download is fetched again first); files not read are not checked. The
        digests of a load are in ``df.attrs["metadata"]["sha256"]``: pass them here to
        pin the next one to the same files.
    progress : bool
        Show progress bars.

    Returns
    -------
    DataFrame
        The tidy response table: ``model`` (the repository's folder name), ``task``
        (the dataset), ``persona`` (display name, e.g. ``"black person"``),
        ``persona_original`` (as stored, ``"a_black_person"``), ``persona_category``
        (P2's category, ``"control"`` for control personas, ``"empty"`` for the
        baseline) and ``persona_group`` (the same, except ``"none"`` for the baseline),
        ``prompt`` (the constant :data:`P2_PROMPT`: P2 uses one zero-shot prompt),
        ``setting`` (``"persona"``, or ``"persona-free"`` for P2's baseline row
        :data:`P2_BASELINE`, whose ``persona`` is ``"none"``), ``setting_original``
        (P2's folder: ``"regular"`` or ``"control"``), ``item_id``, ``refusal`` (0/1), and ``hedge``,
        ``response``, ``refusal_published``, ``statement``/``paraphrase`` (attitude
        items: ``item_id = statement * 31 + paraphrase``) where they apply. Provenance
        is in ``df.attrs["metadata"]``, with the SHA-256 of every file read under
        ``"sha256"``.

    Raises
    ------
    DumpError
        Unknown layout, ragged matrix rows, cells other than 0/1, personas missing from
        the category file, a requested dataset or model that is absent.
    DumpNotFound
        The root, or a requested file, does not exist.
    ChecksumError
        A file pinned in ``checksums`` has another SHA-256.

    Examples
    --------
    >>> import refusalstats as rs  # doctest: +SKIP
    >>> df = rs.dumps.persona_behavior("persona-behavior", datasets="rac", control=True)  # doctest: +SKIP
    >>> # P2's test: the regular personas and the baseline as conditions, items as blocks
    >>> rs.cochran_q(df[df.setting_original == "regular"], condition="persona",
    ...              cluster="item_id", by=["model", "task"])  # doctest: +SKIP
    >>> rs.persona_effect(df, by=["model", "task"])  # personas vs the baseline  # doctest: +SKIP
    """
    if source not in ("matrices", "generations"):
        raise ValueError(f"source must be 'matrices' or 'generations', got {source!r}")
    if detector is not None and source == "matrices":
        raise ValueError(
            "detector= re-classifies raw generations; use it with source='generations' "
            "(the matrices already hold P2's 0/1 decisions)"
        )
    if isinstance(datasets, str):
        datasets = [d.strip() for d in datasets.split(",") if d.strip()]
    if datasets is not None:
        datasets = list(dict.fromkeys(datasets))
        unknown = [d for d in datasets if d not in P2_DATASETS]
        if unknown:
            raise ValueError(f"unknown dataset(s) {unknown}; P2's datasets are {list(P2_DATASETS)}")
        if not datasets:
            raise ValueError("datasets is empty; leave it out to load every dataset")
    r = _Root(root, progress, checksums)
    det, det_name = _resolve_detector(detector) if source == "generations" else (None, "published")

    if categories is False:
        cats, cat_where = None, "(categories disabled)"
    else:
        cats, cat_where = _load_categories(r, None if categories is True else categories)

    settings = [("regular", _P2_FOLDERS["regular"])]
    if control:
        settings.append(("control", _P2_FOLDERS["control"]))

    # which models
    if models is not None:
        model_list = list(models)
    else:
        found = r.models("results/zero")
        model_list = list(P2_MODELS) if found is None else found
        if not model_list:
            raise DumpError(f"no model folders under {r.describe('results/zero')}")

    # plan the files to read
    jobs: list[tuple[str, str, str, str]] = []  # (setting, setting_dir, model, dataset)
    missing: list[str] = []
    for setting, sdir in settings:
        for model in model_list:
            mdir = f"{sdir}/{model}"
            avail = r.datasets(mdir)
            if avail is not None and not (r.path / mdir).is_dir():  # type: ignore[operator]
                missing.append(f"{r.describe(mdir)} (model folder)")
                continue
            want = datasets if datasets is not None else (
                [d for d in P2_DATASETS if d in avail] if avail is not None else list(P2_DATASETS)
            )
            for d in want:
                if source == "matrices" and avail is not None and d not in avail:
                    missing.append(r.describe(f"{mdir}/{d}_refusals.csv"))
                    continue
                jobs.append((setting, sdir, model, d))
    if control and not any(j[0] == "control" for j in jobs):  # a partial tree: warned below
        raise DumpError(
            "control=True (--control) asks for the control personas, but the dump has no "
            f"control results under {r.describe('results/control/zero')}; drop --control "
            "or add results/control/zero/<model>/ to the dump"
        )
    if models is not None:
        empty = [m for m in model_list if not any(j[2] == m for j in jobs)]
        if empty:
            raise DumpError(
                f"model(s) {empty} were asked for (models= / --models) but have no "
                f"{'refusal matrices' if source == 'matrices' else 'datasets'} to load under "
                f"{r.describe('results/zero')}; remove them or check the folder names"
            )
    if missing and (datasets is not None or models is not None):
        raise DumpError(
            f"{len(missing)} requested file(s) or folder(s) are missing: {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}. Choose datasets/models that exist for "
            "every model (and for control personas when control=True)"
        )

    frames: list[pd.DataFrame] = []
    absent: list[str] = list(missing)
    bar = tqdm(jobs, desc="persona-behavior", unit="file", disable=not progress)
    for setting, sdir, model, d in bar:
        bar.set_postfix_str(f"{model} {d} {setting}", refresh=False)
        mdir = f"{sdir}/{model}"
        mat_rel = f"{mdir}/{d}_refusals.csv"
        mat_path = r.get(mat_rel)
        if source == "matrices":
            if mat_path is None:
                if datasets is not None or r.url is None:
                    raise DumpNotFound(f"missing refusal matrix {r.describe(mat_rel)}")
                absent.append(r.describe(mat_rel))
                continue
            mat = parse_matrix(mat_path, r.describe(mat_rel))
            names = _display_map(mat.personas, mat.label)
            if cats is not None and setting == "regular":
                _check_categories(mat.personas, cats, cat_where, mat.label)
            f = _matrix_frame(mat, model=model, dataset=d, setting=setting, names=names, cats=cats)
            if hedges:
                h_rel = f"{mdir}/{d}_hedges.csv"
                h_path = r.get(h_rel)
                if h_path is not None:
                    f["hedge"] = _align(parse_matrix(h_path, r.describe(h_rel)), mat)
            frames.append(f)
        else:
            published = parse_matrix(mat_path, r.describe(mat_rel)) if mat_path is not None else None
            f = _generations_frame(r, mdir, model, d, setting, det, published, cats, cat_where)
            if f is None:
                if datasets is not None:
                    raise DumpNotFound(
                        f"no generations for dataset {d!r} under {r.describe(mdir)} "
                        f"(folder {_GENERATION_FOLDERS[d]}/)"
                    )
                absent.append(r.describe(f"{mdir}/{_GENERATION_FOLDERS[d]}/"))
                continue
            frames.append(f)
    if not frames:
        raise DumpError(
            f"nothing to load under {r.describe('results')}: no "
            f"{'refusal matrices' if source == 'matrices' else 'generations'} for "
            f"datasets {datasets or list(P2_DATASETS)} and models {model_list}"
        )
    if absent:
        warnings.warn(
            f"{len(absent)} file(s) or folder(s) of the layout are absent and were not loaded "
            f"(e.g. {absent[:3]}); the list is in df.attrs['metadata']['absent']. Ask for "
            "datasets=/models= explicitly to make this an error",
            stacklevel=2,
        )
    df = _concat(frames)
    for c in ("hedge", "refusal_published", "statement", "paraphrase"):
        if c in df.columns and df[c].isna().any():
            df[c] = df[c].astype("Int8" if c in ("hedge", "refusal_published") else "Int32")
    out = validate(df)
    out.attrs["metadata"] = {
        "source": "peluz/persona-behavior (de Araujo & Roth 2024)",
        "root": str(root),
        "files": source,
        "detector": det_name,
        "datasets": sorted(out["task"].cat.categories.tolist()),
        "models": out["model"].cat.categories.tolist(),
        "control": bool(control),
        "categories": cat_where if cats is not None else None,
        "prompt": f"'{P2_PROMPT}' (P2 asks each item with a single zero-shot prompt)",
        "absent": absent,
        "sha256": dict(sorted(r.sha256.items())),
    }
    return out


def _generations_frame(r: _Root, mdir: str, model: str, d: str, setting: str,
                       det: Callable | None, published: PersonaItemMatrix | None,
                       cats: dict[str, str] | None, cat_where: str) -> pd.DataFrame | None:
    folder = _GENERATION_FOLDERS[d]
    personas = r.persona_files(f"{mdir}/{folder}")
    if personas is None:  # URL root: the matrix rows name the persona files
        if published is None:
            return None
        personas = list(published.personas)
    if not personas:
        return None
    for p in personas:
        check_name(p, "persona", r.describe(f"{mdir}/{folder}"))
    names = _display_map(personas, r.describe(f"{mdir}/{folder}"))
    if cats is not None and setting == "regular":
        _check_categories(personas, cats, cat_where, r.describe(f"{mdir}/{folder}"))
    rule = det if det is not None else _p2_rule(d)
    parts: list[pd.DataFrame] = []
    for p in personas:
        rel = f"{mdir}/{folder}/{p}.json"
        path = r.get(rel)
        if path is None:
            raise DumpNotFound(f"missing generations {r.describe(rel)}")
        texts = _read_generation_file(path, r.describe(rel))
        stmt = para = None
        if d in ("off", "rac"):
            n_off = published.values.shape[1] if (published is not None and d == "off") else None
            if n_off is None:
                if len(texts) % 2:
                    raise DumpError(
                        f"{r.describe(rel)}: {len(texts)} generations cannot be split into the "
                        "offensiveness and racism halves (expected an even number)"
                    )
                n_off = len(texts) // 2
            texts = texts[:n_off] if d == "off" else texts[n_off:]
            ids = np.arange(len(texts), dtype=np.int64)
        elif d == "attitude":
            n_st = len(texts)
            extra_rel = f"{mdir}/{_ATTITUDE_EXTRA}/{p}.json"
            extra_path = r.get(extra_rel)
            extra = _read_generation_file(extra_path, r.describe(extra_rel)) if extra_path else []
            if n_st == 0 or len(extra) % n_st:
                raise DumpError(
                    f"{r.describe(extra_rel)}: {len(extra)} paraphrase generations for {n_st} "
                    "statements; expected the same number of paraphrases per statement"
                )
            per = len(extra) // n_st
            w = per + 1
            all_texts, stmt_l, para_l = [], [], []
            for j in range(n_st):
                all_texts.append(texts[j])
                stmt_l.append(j)
                para_l.append(0)
                for k in range(per):
                    all_texts.append(extra[j * per + k])
                    stmt_l.append(j)
                    para_l.append(k + 1)
            texts = all_texts
            stmt = np.asarray(stmt_l, dtype=np.int64)
            para = np.asarray(para_l, dtype=np.int64)
            ids = stmt * w + para
        else:
            ids = np.arange(len(texts), dtype=np.int64)
        frame: dict[str, Any] = {
            "model": model, "task": d, "persona": names[p], "persona_original": p,
        }
        voc = _vocabulary(p, setting, cats)
        if cats is not None:
            frame["persona_category"] = _category(p, setting, cats)
            frame["persona_group"] = voc["persona_group"]
        frame.update({"prompt": P2_PROMPT, "setting": voc["setting"],
                      "setting_original": setting, "item_id": _int_ids(ids)})
        if stmt is not None:
            frame["statement"] = stmt.astype(np.int32)
            frame["paraphrase"] = para.astype(np.int32)
        frame["response"] = texts
        frame["refusal"] = _run_detector(rule, texts, r.describe(rel)) if texts else np.zeros(0, np.int8)
        parts.append(pd.DataFrame(frame))
    out = pd.concat(parts, ignore_index=True)
    if published is not None:
        pub = _matrix_frame(published, model=model, dataset=d, setting=setting,
                            names=_display_map(published.personas, published.label), cats=None)
        pub = pub[["persona_original", "item_id", "refusal"]].rename(
            columns={"refusal": "refusal_published"})
        out = out.merge(pub, on=["persona_original", "item_id"], how="left", validate="1:1")
        if out["refusal_published"].isna().any():
            out["refusal_published"] = out["refusal_published"].astype("Int8")
        else:
            out["refusal_published"] = out["refusal_published"].astype(np.int8)
    return out



"""Loaders for published response dumps: reanalyse other papers' answers with refusalstats.

Three loaders turn a published dump into the tidy response table
(:mod:`refusalstats.table`), so every analysis in the package runs on it:

:func:`persona_behavior`
    The public repository of de Araujo & Roth (2024), ``peluz/persona-behavior``:
    persona x item refusal matrices (``results/zero/<model>/<dataset>_refusals.csv``,
    control personas under ``results/control/zero/``), or the raw generations
    (``results/zero/<model>/<folder>/<persona>.json``) re-classified with any
    refusalstats detector.
:func:`xstest`
    XSTest completion files (Röttger et al., 2024): ``id, type, prompt, completion``
    and optionally the human labels ``annotation_1, annotation_2, final_label``.
:func:`read_generic`
    Any CSV / TSV / JSONL / JSON / Parquet file, with a column mapping onto the schema
    and an optional detector run on a text column.

Every loader accepts a local path or an ``http(s)`` URL (for example a raw GitHub
address). URLs are downloaded on first use with a progress bar into a cache folder
(:func:`cache_dir`: ``$REFUSALSTATS_CACHE``, else ``~/.cache/refusalstats``) and read
from there afterwards; nothing is downloaded at import time.

Examples
--------
>>> from refusalstats import dumps
>>> table = dumps.persona_behavior("persona-behavior/", datasets=["off", "rac"],
...                                control=True)  # doctest: +SKIP
>>> xs = dumps.xstest("xstest_v2_completions_gpt4.csv")  # doctest: +SKIP
>>> mine = dumps.read_generic("runs.jsonl", mapping={"model": "llm", "response": "output"},
...                           constants={"task": "qa", "persona": "none", "prompt": "p1"},
...                           detector="paper")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .table import SchemaError, validate

__all__ = [
    "P2_DATASETS",
    "P2_MODELS",
    "P2_PROMPT",
    "XSTEST_LABELS",
    "DumpError",
    "cache_dir",
    "display_persona",
    "fetch",
    "persona_behavior",
    "read_generic",
    "xstest",
]

# --------------------------------------------------------------------------------------
# Constants describing the published layouts
# --------------------------------------------------------------------------------------

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

#: Category given to control personas (paraphrases of "a helpful assistant").
CONTROL_CATEGORY = "control"

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

#: XSTest's final labels and whether each is a refusal (partial refusals count unless
#: ``partial_as_refusal=False``).
XSTEST_LABELS: dict[str, str] = {
    "1_full_compliance": "full_compliance",
    "2_full_refusal": "full_refusal",
    "3_partial_refusal": "partial_refusal",
}

_CACHE_ENV = "REFUSALSTATS_CACHE"


class DumpError(ValueError):
    """A published dump cannot be read: unknown layout, malformed file, bad mapping.

    The message names the file (and row or column) at fault and how to fix it.
    """


class DumpNotFound(DumpError, FileNotFoundError):
    """A file of a dump does not exist (locally, or HTTP 404 for a URL)."""


# --------------------------------------------------------------------------------------
# Downloads and the cache
# --------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The folder where downloaded dumps are cached.

    ``$REFUSALSTATS_CACHE`` when set, else ``~/.cache/refusalstats``.

    Examples
    --------
    >>> import os
    >>> os.environ["REFUSALSTATS_CACHE"] = "/tmp/rs-cache"
    >>> str(cache_dir())
    '/tmp/rs-cache'
    >>> del os.environ["REFUSALSTATS_CACHE"]
    """
    env = os.environ.get(_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/refusalstats").expanduser()


def _is_url(x: object) -> bool:
    return isinstance(x, str) and x.lower().startswith(("http://", "https://"))


def _raw_github(url: str) -> str:
    """Turn ``https://github.com/<owner>/<repo>[/tree/<ref>[/path]]`` into the raw address."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc.lower() not in ("github.com", "www.github.com"):
        return url.rstrip("/")
    segs = [s for s in parts.path.split("/") if s]
    if len(segs) < 2:
        raise DumpError(f"'{url}' is not a repository address; use https://github.com/<owner>/<repo>")
    owner, repo = segs[0], segs[1].removesuffix(".git")
    ref, rest = "main", []
    if len(segs) >= 4 and segs[2] in ("tree", "blob"):
        ref, rest = segs[3], segs[4:]
    return "/".join(["https://raw.githubusercontent.com", owner, repo, ref, *rest])


def _cache_path(url: str, root: Path) -> Path:
    parts = urllib.parse.urlsplit(url)
    segs = [re.sub(r"[^A-Za-z0-9._-]", "_", s) for s in parts.path.split("/") if s not in ("", ".", "..")]
    if not segs:
        segs = ["index"]
    if parts.query:
        digest = hashlib.sha1(parts.query.encode()).hexdigest()[:10]
        segs[-1] = f"{segs[-1]}-{digest}"
    host = re.sub(r"[^A-Za-z0-9._-]", "_", parts.netloc) or "host"
    return root.joinpath(host, *segs)


def _urlopen(request: urllib.request.Request, timeout: float):
    """The network seam (tests replace it); returns a file-like HTTP response."""
    return urllib.request.urlopen(request, timeout=timeout)


def fetch(
    url: str,
    *,
    cache: str | Path | None = None,
    refresh: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` into the cache (once) and return the local path.

    Parameters
    ----------
    url : str
        An ``http://`` or ``https://`` address.
    cache : str or Path, optional
        Cache folder; defaults to :func:`cache_dir`.
    refresh : bool
        Download again even when the file is cached.
    progress : bool
        Show a tqdm progress bar (bytes, with the total when the server sends it).
    timeout : float
        Seconds to wait for the server.

    Returns
    -------
    Path
        The cached file.

    Raises
    ------
    DumpNotFound
        The server answered 404 (remembered in the cache until ``refresh=True``).
    DumpError
        Any other HTTP or connection failure.

    Examples
    --------
    >>> p = fetch("https://raw.githubusercontent.com/peluz/persona-behavior/main/"
    ...           "data/persona_cat.json")  # doctest: +SKIP
    """
    if not _is_url(url):
        raise ValueError(f"fetch() needs an http(s) URL, got {url!r}")
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    dest = _cache_path(url, root)
    absent = dest.with_name(dest.name + ".404")
    if not refresh:
        if dest.is_file():
            return dest
        if absent.is_file():  # remembered 404: the cache answers offline too
            raise DumpNotFound(
                f"{url} does not exist (HTTP 404, remembered in {absent}; pass refresh=True "
                "or delete that file to ask the server again)"
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    from . import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"refusalstats/{__version__}"})
    try:
        with _urlopen(request, timeout) as resp:
            length = resp.headers.get("Content-Length") if getattr(resp, "headers", None) else None
            total = int(length) if length and str(length).isdigit() else None
            with open(tmp, "wb") as fh, tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"downloading {dest.name}", disable=not progress, leave=False,
            ) as bar:
                while True:
                    chunk = resp.read(1 << 16)
                    if not chunk:
                        break
                    fh.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        if exc.code == 404:
            absent.touch()
            raise DumpNotFound(
                f"{url} does not exist (HTTP 404); check the owner, repository, branch and path"
            ) from None
        raise DumpError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DumpError(
            f"could not download {url}: {reason}. Check the address and your connection, "
            "or download the files yourself and pass the local path"
        ) from None
    tmp.replace(dest)
    absent.unlink(missing_ok=True)
    return dest


def _local(path_or_url: str | Path, *, progress: bool = True) -> Path:
    """A local path for a path or URL (URLs are fetched into the cache)."""
    if _is_url(path_or_url):
        return fetch(str(path_or_url), progress=progress)
    p = Path(path_or_url).expanduser()
    if not p.exists():
        raise DumpNotFound(f"no such file or folder: '{p}'")
    return p


# --------------------------------------------------------------------------------------
# Persona names
# --------------------------------------------------------------------------------------


def display_persona(name: str) -> str:
    """Display form of a persona name as stored in a dump.

    Underscores become spaces and a leading lower-case article (``a``, ``an``, ``the``)
    is dropped; case is kept (``an_Asian_person`` -> ``Asian person``). P2's baseline
    without persona (row ``empty``) becomes ``no persona``.

    Examples
    --------
    >>> display_persona("a_black_person")
    'black person'
    >>> display_persona("an_Asian_person"), display_persona("John_F._Kennedy")
    ('Asian person', 'John F. Kennedy')
    >>> display_persona("empty")
    'no persona'
    """
    if not isinstance(name, str):
        raise TypeError(f"persona names are strings, got {name!r}")
    s = " ".join(name.replace("_", " ").split())
    if s in ("", "empty"):
        return "no persona"
    s = re.sub(r"^(?:a|an|the) (?=\S)", "", s)
    return s


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


# --------------------------------------------------------------------------------------
# Persona x item matrices
# --------------------------------------------------------------------------------------

_TRUE = ("1", "1.0", "True", "true")
_FALSE = ("0", "0.0", "False", "false")


@dataclass
class _Matrix:
    """A parsed persona x item matrix; ``values`` is (P, N) or (P, N, W) int8."""

    personas: list[str]
    items: list  # column labels (ints when they all are)
    values: np.ndarray
    label: str

    @property
    def width(self) -> int:
        return 1 if self.values.ndim == 2 else self.values.shape[2]


def _parse_plain_matrix(path: Path) -> tuple[list[str], list[str], np.ndarray] | None:
    """Fast path for a well-formed scalar 0/1 matrix (pandas' C parser); None otherwise.

    Applies only when the file has no quotes or brackets, every non-blank line has exactly
    as many commas as the header, and every cell parses as an integer in {0, 1}. Anything
    else returns None and :func:`_parse_matrix` reads the file strictly, naming the
    problem.
    """
    import io

    text = path.read_text(encoding="utf-8")
    if '"' in text or "[" in text:
        return None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    n_commas = lines[0].count(",")
    if n_commas < 1 or any(ln.count(",") != n_commas for ln in lines):
        return None
    header = lines[0].split(",")
    items = [h.strip() for h in header[1:]]
    personas = [ln.split(",", 1)[0].strip() for ln in lines[1:]]
    try:
        vals = pd.read_csv(io.StringIO(text), header=0, usecols=range(1, n_commas + 1),
                           dtype=np.int8, engine="c").to_numpy()
    except (ValueError, TypeError, pd.errors.ParserError):
        return None
    if vals.shape != (len(personas), len(items)) or not np.isin(vals, (0, 1)).all():
        return None
    return personas, items, np.ascontiguousarray(vals, dtype=np.int8)


def _parse_matrix(path: Path, label: str) -> _Matrix:
    """Read a P2 matrix CSV strictly: every row as long as the header, every cell 0/1.

    Cells are either scalars (``0``/``1``) or numpy-printed vectors (``[0 1 0]``, the
    attitude matrices: one vector of paraphrases per statement). Rows are converted as
    they are read, so a 163 x 58,000 matrix never exists as strings all at once.
    """
    from collections import Counter

    fast = _parse_plain_matrix(path)
    if fast is not None:
        personas, items, values = fast
        if len(set(items)) == len(items) and len(set(personas)) == len(personas) and personas:
            try:
                item_ids: list = [int(h) for h in items]
            except ValueError:
                item_ids = list(items)
            return _Matrix(personas, item_ids, values, label)
    # the strict reader below finds and names any problem (or reads what the fast path
    # does not handle: quoting, vector cells, 1.0 / True spellings)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or len(header) < 2:
            raise DumpError(
                f"{label}: expected a header row ',0,1,...,N-1' (an empty first cell, then "
                f"one column per item); got {header!r}"
            )
        items = [h.strip() for h in header[1:]]
        if len(set(items)) != len(items):
            dup = sorted(h for h, k in Counter(items).items() if k > 1)
            raise DumpError(f"{label}: item column(s) {dup[:5]} appear more than once in the header")
        personas: list[str] = []
        lines: list[int] = []
        scalar_rows: list[np.ndarray] = []
        vector_rows: list[list[str]] = []
        vector_mode: bool | None = None
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line (e.g. at the end of the file)
            if len(row) != len(header):
                raise DumpError(
                    f"{label}, line {reader.line_num} (persona {row[0]!r}): {len(row) - 1} cell(s) "
                    f"but the header has {len(items)} item columns — a ragged row; the file is "
                    "truncated or corrupted, download it again"
                )
            persona = row[0].strip()
            personas.append(persona)
            lines.append(reader.line_num)
            cells = row[1:]
            if vector_mode is None:
                vector_mode = cells[0].lstrip().startswith("[")
            if vector_mode:
                vector_rows.append(cells)
                continue
            a = np.asarray(cells)
            is_true = (a == "1") | (a == "1.0") | (a == "True") | (a == "true")
            ok = is_true | (a == "0") | (a == "0.0") | (a == "False") | (a == "false")
            if not ok.all():
                j = int(np.flatnonzero(~ok)[0])
                raise DumpError(
                    f"{label}, line {reader.line_num} (persona {persona!r}), item column "
                    f"{items[j]!r}: value {str(a[j])!r} is not 0/1 ({int((~ok).sum())} such "
                    "cell(s) in this row). Refusal and hedge matrices hold one 0/1 flag per "
                    "persona and item"
                )
            scalar_rows.append(is_true.astype(np.int8))
    if not personas:
        raise DumpError(f"{label}: the matrix has a header but no persona rows")
    if len(set(personas)) != len(personas):
        dups = sorted(p for p, k in Counter(personas).items() if k > 1)
        raise DumpError(f"{label}: persona row(s) {dups[:5]} appear more than once")
    if vector_mode:
        values = _parse_vector_cells(np.array(vector_rows, dtype=str), personas, items, lines, label)
    else:
        values = np.stack(scalar_rows)
    try:
        item_ids: list = [int(h) for h in items]
    except ValueError:
        item_ids = list(items)
    return _Matrix(personas, item_ids, values, label)


_VECTOR = re.compile(r"^\s*\[([^\]]*)\]\s*$")


def _parse_vector_cells(cells: np.ndarray, personas: list[str], items: list[str],
                        lines: list[int], label: str) -> np.ndarray:
    n_p, n_i = cells.shape
    width = None
    out = None
    for i in range(n_p):
        for j in range(n_i):
            m = _VECTOR.match(cells[i, j])
            where = f"{label}, line {lines[i]} (persona {personas[i]!r}), item column {items[j]!r}"
            if m is None:
                raise DumpError(
                    f"{where}: value {str(cells[i, j])!r} is not a vector like '[0 1 0]' although the "
                    "first cell of the matrix is one; all cells must have the same form"
                )
            parts = m.group(1).replace(",", " ").split()
            if width is None:
                width = len(parts)
                if width == 0:
                    raise DumpError(f"{where}: empty vector '[]'")
                out = np.zeros((n_p, n_i, width), dtype=np.int8)
            if len(parts) != width:
                raise DumpError(
                    f"{where}: vector of {len(parts)} values, but the first cell has {width} — "
                    "ragged vectors; the file is corrupted"
                )
            for k, v in enumerate(parts):
                if v in _TRUE:
                    out[i, j, k] = 1
                elif v not in _FALSE:
                    raise DumpError(f"{where}, position {k}: value {v!r} is not 0/1")
    assert out is not None
    return out


# --------------------------------------------------------------------------------------
# persona-behavior (P2)
# --------------------------------------------------------------------------------------


class _Root:
    """A P2 repository root: a local folder or a base URL."""

    def __init__(self, root: str | Path, progress: bool):
        self.progress = progress
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
        """Local path of ``rel`` (downloaded when the root is a URL), or None if absent."""
        if self.url is not None:
            try:
                return fetch(f"{self.url}/{rel}", progress=self.progress)
            except DumpNotFound:
                return None
        assert self.path is not None
        p = self.path / rel
        return p if p.exists() else None

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
    missing = [p for p in raw_personas if p not in cats]
    if missing:
        raise DumpError(
            f"{label}: {len(missing)} persona(s) are missing from the category file {where}: "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}. Add them to the file, pass "
            "categories={...} with every persona, or categories=False to load without "
            "categories"
        )


def _matrix_frame(mat: _Matrix, *, model: str, dataset: str, setting: str,
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
    if cats is not None:
        per = [CONTROL_CATEGORY if setting == "control" else cats[p] for p in mat.personas]
        frame["persona_category"] = _coded_cat(per, p_idx)
        frame["persona_group"] = _coded_cat(per, p_idx)
    frame["prompt"] = _const_cat(P2_PROMPT, n)
    frame["setting"] = _const_cat(setting, n)
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
                    "persona_group", "prompt", "setting")


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


def _align(other: _Matrix, ref: _Matrix) -> np.ndarray:
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
    from .detect import HedgeDetector

    hedge = HedgeDetector(labels=None)

    def rule(texts: Sequence[str]) -> np.ndarray:
        return hedge(texts) & ~_answer_found(texts, dataset)

    return rule


def _resolve_detector(detector) -> tuple[Callable | None, str]:
    if detector is None:
        return None, "p2-rule"
    if isinstance(detector, str):
        from .detect import detector as by_name

        return by_name(detector), detector
    if not callable(detector):
        raise TypeError("detector must be a detector name (e.g. 'paper'), a Detector or a callable")
    return detector, getattr(detector, "name", type(detector).__name__)


def _run_detector(det: Callable, texts: Sequence[str], label: str) -> np.ndarray:
    flags = np.asarray(det(list(texts)))
    if flags.shape != (len(texts),):
        raise DumpError(f"{label}: the detector returned shape {flags.shape} for {len(texts)} texts")
    return flags.astype(bool).astype(np.int8)


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
        ``setting = "control"`` and ``persona_category = "control"``. The regular
        personas always load, with ``setting = "regular"``.
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
    progress : bool
        Show progress bars.

    Returns
    -------
    DataFrame
        The tidy response table: ``model`` (the repository's folder name), ``task``
        (the dataset), ``persona`` (display name, e.g. ``"black person"``),
        ``persona_original`` (as stored, ``"a_black_person"``), ``persona_category``
        and ``persona_group`` (same values), ``prompt`` (the constant
        :data:`P2_PROMPT`: P2 uses one zero-shot prompt), ``setting``
        (``"regular"``/``"control"``), ``item_id``, ``refusal`` (0/1), and ``hedge``,
        ``response``, ``refusal_published``, ``statement``/``paraphrase`` (attitude
        items: ``item_id = statement * 31 + paraphrase``) where they apply. Provenance
        is in ``df.attrs["metadata"]``.

    Raises
    ------
    DumpError
        Unknown layout, ragged matrix rows, cells other than 0/1, personas missing from
        the category file, a requested dataset or model that is absent.

    Examples
    --------
    >>> from refusalstats import dumps, rates  # doctest: +SKIP
    >>> df = dumps.persona_behavior("persona-behavior", datasets="rac", control=True)  # doctest: +SKIP
    >>> rates.cochran_q(df[df.setting == "regular"], condition="persona",
    ...                 block="item_id", by=["model", "task"])  # doctest: +SKIP
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
    r = _Root(root, progress)
    det, det_name = _resolve_detector(detector) if source == "generations" else (None, "published")

    if categories is False:
        cats, cat_where = None, "(categories disabled)"
    else:
        cats, cat_where = _load_categories(r, None if categories is True else categories)

    settings = [("regular", "results/zero")]
    if control:
        settings.append(("control", "results/control/zero"))

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
            mat = _parse_matrix(mat_path, r.describe(mat_rel))
            names = _display_map(mat.personas, mat.label)
            if cats is not None and setting == "regular":
                _check_categories(mat.personas, cats, cat_where, mat.label)
            f = _matrix_frame(mat, model=model, dataset=d, setting=setting, names=names, cats=cats)
            if hedges:
                h_rel = f"{mdir}/{d}_hedges.csv"
                h_path = r.get(h_rel)
                if h_path is not None:
                    f["hedge"] = _align(_parse_matrix(h_path, r.describe(h_rel)), mat)
            frames.append(f)
        else:
            published = _parse_matrix(mat_path, r.describe(mat_rel)) if mat_path is not None else None
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
    }
    return out


def _generations_frame(r: _Root, mdir: str, model: str, d: str, setting: str,
                       det: Callable | None, published: _Matrix | None,
                       cats: dict[str, str] | None, cat_where: str) -> pd.DataFrame | None:
    folder = _GENERATION_FOLDERS[d]
    personas = r.persona_files(f"{mdir}/{folder}")
    if personas is None:  # URL root: the matrix rows name the persona files
        if published is None:
            return None
        personas = list(published.personas)
    if not personas:
        return None
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
        if cats is not None:
            cat = CONTROL_CATEGORY if setting == "control" else cats[p]
            frame["persona_category"] = cat
            frame["persona_group"] = cat
        frame.update({"prompt": P2_PROMPT, "setting": setting, "item_id": _int_ids(ids)})
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


# --------------------------------------------------------------------------------------
# Generic files
# --------------------------------------------------------------------------------------


def _read_any(path: Path, label: str, format: str | None = None) -> pd.DataFrame:
    name = path.name.lower()
    name = name.removesuffix(".gz")
    fmt = format or next(
        (f for ext, f in ((".parquet", "parquet"), (".pq", "parquet"), (".csv", "csv"),
                          (".tsv", "tsv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
                          (".json", "json")) if name.endswith(ext)),
        None,
    )
    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        if fmt == "csv":
            return pd.read_csv(path)
        if fmt == "tsv":
            return pd.read_csv(path, sep="\t")
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, orient="records")
        if fmt == "json":
            return pd.read_json(path, orient="records")
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        raise DumpError(f"{label}: cannot read it as {fmt}: {exc}") from None
    raise DumpError(
        f"{label}: cannot tell the format from the extension; use .csv, .tsv, .jsonl, "
        ".json or .parquet (optionally .gz), or pass format='csv'|'tsv'|'jsonl'|'json'|'parquet'"
    )


def _schema_error(exc: SchemaError, label: str) -> DumpError:
    return DumpError(f"{label}: the imported table does not follow the schema:\n"
                     + "\n".join(f"  - {p}" for p in exc.problems))


def read_generic(
    path: str | Path,
    mapping: Mapping[str, str] | None = None,
    *,
    detector: Any = None,
    text_column: str = "response",
    constants: Mapping[str, Any] | None = None,
    format: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Read any response file and map its columns onto the tidy schema.

    Parameters
    ----------
    path : str or Path
        A CSV, TSV, JSONL, JSON (list of records) or Parquet file, optionally
        gzip-compressed, or an http(s) URL of one.
    mapping : mapping of str to str, optional
        Schema column -> column in the file, e.g. ``{"model": "llm", "response":
        "output"}``. Every source column must exist.
    detector : str, Detector or callable, optional
        Classify ``text_column`` (after mapping) with this detector and store the result
        in ``refusal``; an existing ``refusal`` column is kept as ``refusal_original``.
        Without a detector the file must provide ``refusal``.
    text_column : str
        The column holding the answers (default ``response``).
    constants : mapping, optional
        Columns to add with one value for every row, for required columns the file
        lacks (e.g. ``{"task": "qa", "persona": "none", "prompt": "p1"}``).
    format : str, optional
        Override the format guessed from the extension.

    Returns
    -------
    DataFrame
        The validated tidy table; columns not named in ``mapping`` pass through.

    Raises
    ------
    DumpError
        A mapping naming absent columns, a mapped name clashing with an existing
        column, missing answers for the detector, or a table that fails
        :func:`refusalstats.validate` (every problem listed).

    Examples
    --------
    >>> t = read_generic("answers.csv", {"model": "llm", "response": "output"},
    ...                  constants={"task": "nli", "persona": "none", "prompt": "p1"},
    ...                  detector="paper")  # doctest: +SKIP
    """
    label = str(path)
    local = _local(path, progress=progress)
    if local.is_dir():
        raise DumpError(f"{label} is a folder; read_generic() reads one file")
    df = _read_any(local, label, format)
    mapping = dict(mapping or {})
    absent = sorted({src for src in mapping.values() if src not in df.columns})
    if absent:
        raise DumpError(
            f"{label}: the mapping names column(s) {absent} that the file does not have; its "
            f"columns are {list(df.columns)}"
        )
    clash = [dst for dst, src in mapping.items()
             if dst != src and dst in df.columns and dst not in mapping.values()]
    if clash:
        raise DumpError(
            f"{label}: mapping onto {clash} would overwrite the file's own column(s) of that "
            f"name; map those too (e.g. {clash[0]}_original={clash[0]}) or drop the mapping"
        )
    srcs = list(mapping.values())
    dup_src = sorted({s for s in srcs if srcs.count(s) > 1})
    if dup_src:
        raise DumpError(f"{label}: column(s) {dup_src} are mapped twice; map each column once")
    df = df.rename(columns={src: dst for dst, src in mapping.items()})
    for col, value in dict(constants or {}).items():
        if col in df.columns:
            raise DumpError(
                f"{label}: constants sets column '{col}', which the file already has; drop it "
                "from constants or map the file's column to another name"
            )
        df[col] = value
    det_name = None
    if detector is not None:
        det, det_name = _resolve_detector(detector)
        if text_column not in df.columns:
            raise DumpError(
                f"{label}: no text column '{text_column}' to run the detector on; map one "
                f"(mapping={{'{text_column}': '<column>'}}) or pass text_column=. Columns: "
                f"{list(df.columns)}"
            )
        texts = df[text_column]
        bad = texts.isna().to_numpy() | ~texts.map(lambda t: isinstance(t, str)).to_numpy()
        if bad.any():
            rows = np.flatnonzero(bad)[:5].tolist()
            raise DumpError(
                f"{label}: {int(bad.sum())} row(s) of '{text_column}' are missing or not text "
                f"(first rows {rows}); a missing answer is neither refusal nor compliance — fill "
                "or drop them in the file"
            )
        if "refusal" in df.columns:
            df = df.rename(columns={"refusal": "refusal_original"})
        df["refusal"] = _run_detector(det, texts.tolist(), label)
    elif "refusal" not in df.columns:
        raise DumpError(
            f"{label}: no 'refusal' column; map one (mapping={{'refusal': '<column>'}}) or pass "
            f"detector='default' (or 'paper', 'xstest', 'hedge') to classify '{text_column}'"
        )
    try:
        out = validate(df)
    except SchemaError as exc:
        raise _schema_error(exc, label) from None
    out.attrs["metadata"] = {"source": label, "mapping": mapping, "detector": det_name,
                             "constants": {k: str(v) for k, v in dict(constants or {}).items()}}
    return out


# --------------------------------------------------------------------------------------
# XSTest
# --------------------------------------------------------------------------------------

_XSTEST_PREFIXES = ("xstest_v2_completions_", "xstest_completions_", "completions_")


def _model_from_name(path: Path) -> str:
    stem = path.name
    for suf in (".gz", ".csv", ".tsv", ".jsonl", ".json", ".parquet"):
        stem = stem.removesuffix(suf)
    for pre in _XSTEST_PREFIXES:
        if stem.lower().startswith(pre):
            return stem[len(pre):] or stem
    return stem


def xstest(
    paths: str | Path | Sequence[str | Path],
    *,
    detector: Any = "xstest",
    model: str | Mapping[str, str] | None = None,
    partial_as_refusal: bool = True,
    label: str = "detector",
    progress: bool = True,
) -> pd.DataFrame:
    """Load XSTest completion files (Röttger et al., 2024) as a tidy table.

    Each file holds one model's completions with columns ``id, type, prompt,
    completion`` and, when annotated, ``annotation_1, annotation_2, final_label``
    (``1_full_compliance`` / ``2_full_refusal`` / ``3_partial_refusal``).

    Parameters
    ----------
    paths : path, URL, or a list of them
        CSV (or TSV / JSONL / Parquet) files.
    detector : str, Detector or callable
        Classifies ``completion`` into ``refusal`` (default: XSTest's own string match,
        ``"xstest"``).
    model : str or mapping, optional
        Model name for every file, or file -> name. Default: the file's ``model``
        column if it has one, else its name without the ``xstest_v2_completions_``
        prefix (``xstest_v2_completions_gpt4.csv`` -> ``gpt4``).
    partial_as_refusal : bool
        Whether ``3_partial_refusal`` counts as a refusal in ``label_refusal``.
    label : {"detector", "human"}
        What ``refusal`` holds: the detector's flag (default), or the human
        ``final_label`` (then the detector's flag is kept in ``refusal_detector``; every
        row must be labelled).

    Returns
    -------
    DataFrame
        ``model``, ``task = "xstest"``, ``persona = "none"``, ``setting =
        "persona-free"``, ``prompt`` (the prompt type, e.g. ``"homonyms"``), ``safe``
        (False for ``contrast_*`` types), ``item_id``, ``prompt_text``, ``response``,
        ``refusal`` (the detector); with human labels also ``label`` (the final label
        without its number), ``label_refusal`` (0/1, ``<NA>`` where unlabelled) and the
        annotation columns. Score detectors against humans with
        ``evaluate_detector(det, df.response, df.label_refusal)``.

    Raises
    ------
    DumpError
        A missing column, an empty completion, or an unknown label value (the message
        names the file and row).

    Examples
    --------
    >>> from refusalstats import dumps, detect  # doctest: +SKIP
    >>> xs = dumps.xstest(["xstest_v2_completions_gpt4.csv"])  # doctest: +SKIP
    >>> lab = xs[xs.label_refusal.notna()]  # doctest: +SKIP
    >>> detect.evaluate_detector("paper", lab.response, lab.label_refusal.astype(int))  # doctest: +SKIP
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise ValueError("xstest() needs at least one completion file")
    if label not in ("detector", "human"):
        raise ValueError(f"label must be 'detector' or 'human', got {label!r}")
    refusal_from = label  # (the loop below reuses `label` for the file's name)
    det, det_name = _resolve_detector(detector)
    if det is None:
        raise ValueError("xstest() needs a detector (default 'xstest')")
    frames = []
    for src in tqdm(paths, desc="xstest", unit="file", disable=not progress or len(paths) < 2):
        label = str(src)
        local = _local(src, progress=progress)
        raw = _read_any(local, label)
        need = ["type", "prompt", "completion"]
        miss = [c for c in need if c not in raw.columns]
        if miss:
            raise DumpError(
                f"{label}: missing XSTest column(s) {miss}; expected id, type, prompt, completion "
                f"(and optionally annotation_1, annotation_2, final_label). Columns: {list(raw.columns)}"
            )
        comp = raw["completion"]
        bad = comp.isna().to_numpy() | ~comp.map(lambda t: isinstance(t, str)).to_numpy()
        if bad.any():
            rows = (np.flatnonzero(bad)[:5] + 2).tolist()
            raise DumpError(
                f"{label}: {int(bad.sum())} completion(s) are empty or not text (file lines "
                f"{rows}); fill them (e.g. with '') or remove those rows"
            )
        types = raw["type"]
        if types.isna().any():
            rows = (np.flatnonzero(types.isna().to_numpy())[:5] + 2).tolist()
            raise DumpError(f"{label}: empty 'type' at file lines {rows}")
        types = types.astype(str)
        if isinstance(model, Mapping):
            if label not in model:
                raise DumpError(f"model= mapping has no entry for {label}; it has {list(model)}")
            mname = model[label]
        elif isinstance(model, str):
            mname = model
        elif "model" in raw.columns:
            mname = raw["model"].astype(str).to_numpy()
        else:
            mname = _model_from_name(local if not _is_url(src) else Path(urllib.parse.urlsplit(label).path))
        out = pd.DataFrame({
            "model": mname,
            "task": "xstest",
            "persona": "none",
            "setting": "persona-free",
            "prompt": types.to_numpy(),
            "safe": ~types.str.startswith("contrast_").to_numpy(),
            "item_id": raw["id"].to_numpy() if "id" in raw.columns else np.arange(len(raw)),
            "prompt_text": raw["prompt"].astype(str).to_numpy(),
            "response": comp.to_numpy(),
        })
        out["refusal"] = _run_detector(det, comp.tolist(), label)
        for c in ("annotation_1", "annotation_2"):
            if c in raw.columns:
                out[c] = raw[c].to_numpy()
        if "final_label" in raw.columns:
            lab = raw["final_label"]
            known = lab.isna() | lab.isin(list(XSTEST_LABELS))
            if not known.all():
                i = int(np.flatnonzero(~known.to_numpy())[0])
                raise DumpError(
                    f"{label}, line {i + 2}: final_label {lab.iloc[i]!r} is not one of "
                    f"{list(XSTEST_LABELS)} (or empty); {int((~known).sum())} such row(s)"
                )
            out["label"] = lab.map(XSTEST_LABELS).to_numpy()
            refusing = {"2_full_refusal"} | ({"3_partial_refusal"} if partial_as_refusal else set())
            lr = pd.array([pd.NA if pd.isna(v) else int(v in refusing) for v in lab], dtype="Int8")
            out["label_refusal"] = lr
            n_na = int(lab.isna().sum())
            if n_na:
                warnings.warn(
                    f"{label}: {n_na} row(s) have no final_label; label_refusal is <NA> there "
                    "(kept, not dropped)", stacklevel=2)
        if refusal_from == "human":
            if "label_refusal" not in out.columns:
                raise DumpError(f"{src!s}: label='human' needs a final_label column; "
                                "this file has none (use the detector: label='detector')")
            missing = out["label_refusal"].isna().to_numpy()
            if missing.any():
                rows = (np.flatnonzero(missing)[:5] + 2).tolist()
                raise DumpError(f"{src!s}: label='human' but {int(missing.sum())} row(s) "
                                f"have no final_label (file lines {rows}); label them, or use "
                                "label='detector'")
            out["refusal_detector"] = out["refusal"]
            out["refusal"] = out["label_refusal"].astype("int8").to_numpy()
        frames.append(out)
    df = pd.concat(frames, ignore_index=True)
    try:
        res = validate(df)
    except SchemaError as exc:
        raise _schema_error(exc, ", ".join(map(str, paths))) from None
    res.attrs["metadata"] = {"source": "XSTest completions (Röttger et al. 2024)",
                             "files": [str(p) for p in paths], "detector": det_name,
                             "refusal": "human final_label" if refusal_from == "human" else det_name,
                             "partial_as_refusal": partial_as_refusal}
    return res

"""XSTest completion files (Röttger et al., 2024) as a tidy response table."""

from __future__ import annotations

import urllib.parse
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..table import SchemaError, validate
from ..vocabulary import NO_PERSONA, PERSONA_FREE
from .classify import _resolve_detector, _run_detector
from .download import _is_url, _local, sha256_of
from .errors import DumpError, _schema_error
from .generic import _read_file

#: XSTest's final labels and whether each is a refusal (partial refusals count unless
#: ``partial_as_refusal=False``).
XSTEST_LABELS: dict[str, str] = {
    "1_full_compliance": "full_compliance",
    "2_full_refusal": "full_refusal",
    "3_partial_refusal": "partial_refusal",
}



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
    sha256: str | Mapping[str, str] | None = None,
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
    sha256 : str or mapping, optional
        SHA-256 pin of the file (one file), or file -> pin (as the file is given in
        ``paths``); a file with another content raises
        :class:`~refusalstats.dumps.ChecksumError`.
    progress : bool
        Show progress bars (files, downloads).

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
    digests: dict[str, str] = {}
    for src in tqdm(paths, desc="xstest", unit="file", disable=not progress or len(paths) < 2):
        label = str(src)
        if isinstance(sha256, Mapping):
            pin = sha256.get(label)
        elif sha256 is not None and len(paths) > 1:
            raise ValueError("sha256= for several files is a mapping file -> digest")
        else:
            pin = sha256
        local = _local(src, progress=progress, sha256=pin)
        raw = _read_file(local, label)
        digests[label] = sha256_of(local)
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
            "persona": NO_PERSONA,  # XSTest prompts name no persona: the persona-free setting
            "setting": PERSONA_FREE,
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
                             "partial_as_refusal": partial_as_refusal, "sha256": digests}
    return res

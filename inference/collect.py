"""Merge the outputs of run directories (shards of one run, or several runs) into one table.

:func:`collect_runs` is what ``refusalstats collect RUN_DIR... -o table.parquet`` calls.
Each argument is a run directory (it holds ``run.json``) or a folder of shard run
directories (``shard-I-of-N/run.json``, as ``generate --shard`` writes them). Runs over
the same prompts table (the same fingerprint of the full table, recorded in every
shard's ``run.json``) form one experiment; in each experiment every model must have
answered every prompt of the full table exactly once. A prompt answered twice (a
shard collected twice under two names, or the same run sharded two ways) and a prompt
not answered (a shard that did not run or did not finish) are errors that say how many
and where; ``allow_missing=True`` (``--allow-missing``) writes what is there and records
the count.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from refusalstats.rundir import PROMPTS_FILE, RUN_FILE, SHARD_RUN_GLOB, SHARDS_DIR
from refusalstats.table import read_table

from .runner import _detect_refusals, _now, _read_shards, _restore_levels, _slug

__all__ = ["collect_runs", "find_run_dirs"]


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """The run directories named by ``paths``: a path itself, or the runs one or two levels below.

    ``runs/p1`` (a run, or a folder of ``shard-I-of-N`` runs) and ``runs/`` (a folder of
    such) both work. The same directory named twice is kept once.
    """
    found: list[Path] = []
    seen = set()
    for p in paths:
        p = Path(p)
        if (p / RUN_FILE).is_file():
            dirs = [p]
        elif p.is_dir():
            dirs = sorted(q.parent for pattern in (f"*/{RUN_FILE}", f"*/{SHARD_RUN_GLOB}/{RUN_FILE}")
                          for q in p.glob(pattern))
            if not dirs:
                raise FileNotFoundError(f"{p} holds no run: neither {p}/run.json nor "
                                        f"{p}/shard-*/run.json")
        else:
            raise FileNotFoundError(f"{p} is not a run directory (no such directory)")
        for d in dirs:
            key = d.resolve()
            if key not in seen:
                seen.add(key)
                found.append(d)
    return found


def _portable_identity(identity: dict | None) -> dict:
    """A model's identity without what legitimately differs between machines."""
    ident = dict(identity or {})
    ident.pop("base_url", None)
    if str(ident.get("commit", "")).startswith("local-sha256:"):
        ident.pop("model", None)  # a local copy: its content hash decides, not its path
    return ident


def _shard_of(meta: dict) -> dict:
    shard = dict(meta.get("shard") or {})
    shard.setdefault("index", 0)
    shard.setdefault("count", 1)
    shard.setdefault("n_rows_total", meta.get("n_rows"))
    shard.setdefault("prompts_sha256_total", meta.get("prompts_sha256"))
    return shard


def _run_rows(out: Path, meta: dict, models: Sequence[str] | None) -> list[tuple[str, pd.DataFrame]]:
    """Each model's answered rows in one run directory, duplicates kept."""
    prompts = read_table(out / PROMPTS_FILE)
    base = prompts.drop(columns=["prompt_text", "system_text", "user_text"], errors="ignore")
    result = []
    for name, entry in meta.get("models", {}).items():
        if models is not None and name not in models:
            continue
        shards = _read_shards(out / SHARDS_DIR / (entry.get("shard_dir") or _slug(name)))
        shards = shards[shards["row_id"].isin(prompts["row_id"])]
        merged = base.merge(shards, on="row_id", how="inner")
        merged.insert(0, "model", name)
        result.append((name, merged))
    return result


def collect_runs(
    run_dirs: Sequence[str | Path],
    *,
    detector: str | Callable | None = "default",
    models: Sequence[str] | None = None,
    tasks=None,
    allow_missing: bool = False,
) -> pd.DataFrame:
    """Merge run directories (shards of one run, several runs) into one tidy table.

    Parameters
    ----------
    run_dirs : sequence of paths
        Run directories, or folders holding ``shard-I-of-N`` run directories.
    detector : str, callable or None
        Refusal detector, as in :func:`refusalstats.inference.run_generation`; None leaves
        ``refusal`` out.
    models : sequence of str, optional
        Only these models (default: every model found).
    tasks : mapping, optional
        Task definitions for label sets (default: P1's).
    allow_missing : bool
        Keep going when prompts have no answer; the count per model is in
        ``attrs["metadata"]["n_missing"]`` and a warning.

    Returns
    -------
    DataFrame
        One row per (model, prompt), ordered by model, then run, then ``row_id`` (a
        sharded run comes out in the order of the unsharded one). ``batch_id`` of a shard's
        rows is prefixed with the shard (``2/8:s00-b000004``) so it stays unique.

    Raises
    ------
    ValueError
        A prompt answered more than once, prompts without an answer (unless
        ``allow_missing``), or shards of one run with different settings or models.

    Examples
    --------
    >>> table = collect_runs(["runs/p1"], detector="paper")  # doctest: +SKIP
    """
    dirs = find_run_dirs(run_dirs)
    if not dirs:
        raise ValueError("collect needs at least one run directory")
    groups: dict[str, dict] = {}  # experiment fingerprint -> what its shards agree on
    frames = []
    run_meta = {}
    for d in dirs:
        meta = json.loads((d / RUN_FILE).read_text())
        shard = _shard_of(meta)
        key = str(shard["prompts_sha256_total"])
        g = groups.setdefault(key, {
            "order": len(groups), "n_rows_total": int(shard["n_rows_total"]),
            "placement": meta.get("placement"), "decoding": meta.get("decoding"),
            "template_date": meta.get("template_date"), "first": d, "shards": {},
            "identity": {}, "levels": meta.get("levels", {}), "dirs": [],
        })
        for field in ("placement", "decoding", "template_date"):
            if meta.get(field) != g[field]:
                raise ValueError(
                    f"{d} and {g['first']} are shards of one run but differ in {field} "
                    f"({meta.get(field)!r} vs {g[field]!r}); collect them separately")
        g["dirs"].append(d)
        g["shards"].setdefault((int(shard["index"]), int(shard["count"])), []).append(d)
        run_meta[str(d)] = {"shard": shard, "models": meta.get("models", {}),
                            "created": meta.get("created"), "seed": meta.get("seed")}
        for name, rows in _run_rows(d, meta, models):
            ident = _portable_identity(meta["models"][name].get("identity"))
            seen = g["identity"].setdefault(name, (ident, d))
            if ident and seen[0] and ident != seen[0]:
                diff = sorted(k for k in set(ident) | set(seen[0]) if ident.get(k) != seen[0].get(k))
                raise ValueError(
                    f"model {name!r} differs between {seen[1]} and {d} ({', '.join(diff)}); "
                    "shards of one run must use the same model")
            if int(shard["count"]) > 1 and "batch_id" in rows.columns:
                prefix = f"{int(shard['index'])}/{int(shard['count'])}:"
                rows["batch_id"] = prefix + rows["batch_id"].astype(str)
            rows["_run"] = g["order"]
            rows["_dir"] = str(d)
            frames.append(rows)
    if models is not None:
        absent = [m for m in models if not any(m in g["identity"] for g in groups.values())]
        if absent:
            raise KeyError(f"model(s) {absent} not found in {', '.join(map(str, dirs))}")
    if not frames:
        raise ValueError(f"no generated rows in {', '.join(map(str, dirs))}")
    df = pd.concat(frames, ignore_index=True)
    names = list(dict.fromkeys(df["model"]))

    # -- exactly once: duplicates, then missing prompts --------------------------------
    dup = df.duplicated(["_run", "model", "row_id"], keep=False)
    if dup.any():
        d = df[dup]
        n = int(d.drop_duplicates(["_run", "model", "row_id"]).shape[0])
        first = d.iloc[0]
        where = sorted(set(d.loc[(d["_run"] == first["_run"]) & (d["model"] == first["model"]),
                                 "_dir"]))
        raise ValueError(
            f"{n} prompt(s) answered more than once (model {first['model']!r}, e.g. row_id "
            f"{int(first['row_id'])} in {' and '.join(where[:3])}); a run was sharded two ways "
            "or a shard is named twice: collect each shard once")
    n_missing: dict[str, int] = {}
    problems = []
    for g in groups.values():
        sub = df[df["_run"] == g["order"]]
        counts = sub.groupby("model", sort=False)["row_id"].nunique()
        total = g["n_rows_total"]
        shard_counts = {c for _, c in g["shards"]}
        expected = {(i, c) for c in shard_counts for i in range(c)}
        absent = sorted(expected - set(g["shards"]))
        for name in names:
            if name not in g["identity"]:
                continue
            missing = total - int(counts.get(name, 0))
            if missing:
                key = name if len(groups) == 1 else f"{name} ({g['first']})"
                n_missing[key] = n_missing.get(key, 0) + missing
                hint = (f"; shard(s) {', '.join(f'{i}/{c}' for i, c in absent)} not found"
                        if absent else "; a shard is unfinished (rerun it with --resume)")
                where = (g["first"].parent if max(shard_counts) > 1
                         else ", ".join(map(str, g["dirs"])))
                problems.append(f"model {name!r}: {missing:,} of {total:,} prompts have no "
                                f"answer in {where}{hint}")
    if problems and not allow_missing:
        raise ValueError("; ".join(problems) + "; run what is missing, or pass --allow-missing "
                         "(allow_missing=True) to write the table anyway")
    if problems:
        warnings.warn("; ".join(problems) + "; writing the table without them", stacklevel=2)

    df["model"] = pd.Categorical(df["model"], categories=names)
    df = df.sort_values(["model", "_run", "row_id"], kind="stable").reset_index(drop=True)
    df = df.drop(columns=["_run", "_dir"])
    levels = {}
    for g in groups.values():
        for c, lv in (g["levels"] or {}).items():
            levels.setdefault(c, list(lv))
            levels[c] += [x for x in lv if x not in set(levels[c])]
    _restore_levels(df, levels)
    meta_out = {
        "source": "refusalstats.inference.collect", "collected": _now(),
        "runs": run_meta, "n_missing": n_missing,
        "n_prompts": int(sum(g["n_rows_total"] for g in groups.values())),
        "placement": next(iter(groups.values()))["placement"],
        "decoding": next(iter(groups.values()))["decoding"],
    }
    if detector is not None:
        from refusalstats.table import validate

        df, det_name = _detect_refusals(df, detector, tasks)
        meta_out["detector"] = det_name
        df = validate(df, error_rows="keep")
    df.attrs["metadata"] = meta_out
    return df

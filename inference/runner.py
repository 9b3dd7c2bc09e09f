"""Run a prompts table through one or more models: batched, sharded, resumable.

:func:`run_generation` takes the design's prompts table and a list of models and writes
a run directory::

    <out>/run.json              run metadata (models, revisions, decoding, versions, times)
    <out>/prompts.parquet       the prompts table as run (with ``row_id``)
    <out>/shards/<model>/part-000000.parquet   generated rows, written atomically
    <out>/responses.parquet     the tidy response table the core reads

Rows are sorted by prompt length and cut into batches under a token budget (prompt plus
new tokens, summed over the batch), so little compute goes to padding. Every shard is
written to a temporary name and renamed, so a shard on disk is complete; with
``resume=True`` the rows already in shards are skipped, and a run killed at any point
(SIGKILL included) and restarted produces every row exactly once. A CUDA out-of-memory
error halves the batch and retries. When all models are done, refusal detection runs on
the raw answers (kept in ``response``) and the tidy table is written with the run
metadata in its Parquet key-value metadata.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .backends import Backend, DecodingParams, TransformersBackend, is_out_of_memory
from .prompts import build_user_prompts, render_chats

__all__ = [
    "ModelSpec",
    "collect_responses",
    "padded_tokens",
    "plan_batches",
    "run_generation",
]

_SHARD_COLUMNS = ("row_id", "response", "prompt_text", "system_text", "n_prompt_tokens",
                  "n_new_tokens", "finish_reason")


@dataclass(frozen=True)
class ModelSpec:
    """A model to run.

    Parameters
    ----------
    model : str
        Hub id or local directory.
    name : str, optional
        Value of the ``model`` column (default: the last part of ``model``), e.g.
        ``"Llama2-13B"`` to match P1's tables.
    revision, tokenizer, dtype, device, trust_remote_code, device_map
        Passed to :class:`~refusalstats.inference.backends.TransformersBackend`.

    Examples
    --------
    >>> ModelSpec.parse("Llama2-13B=meta-llama/Llama-2-13b-chat-hf@main").name
    'Llama2-13B'
    """

    model: str
    name: str | None = None
    revision: str | None = None
    tokenizer: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    device_map: str | None = None

    @property
    def label(self) -> str:
        """The model's name in the response table."""
        return self.name or Path(self.model.rstrip("/")).name

    @classmethod
    def parse(cls, text: str, **kwargs) -> ModelSpec:
        """Parse ``[name=]model[@revision]`` (the CLI's ``--model`` syntax)."""
        name = None
        if "=" in text:
            name, text = text.split("=", 1)
        revision = None
        if "@" in text and not Path(text).exists():
            text, revision = text.rsplit("@", 1)
        if not text:
            raise ValueError("--model needs a hub id or a path, e.g. --model Llama2-13B=meta-llama/...")
        return cls(model=text, name=name or None, revision=revision, **kwargs)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def plan_batches(
    lengths: Sequence[int],
    max_new_tokens: int,
    token_budget: int | None = None,
    batch_size: int | None = None,
    max_batch_size: int = 256,
    sort: bool = True,
) -> list[np.ndarray]:
    """Cut rows into batches, longest first, under a token budget.

    A batch of ``n`` prompts whose longest has ``L`` tokens costs ``n * (L +
    max_new_tokens)`` tokens of compute and KV cache (left padding to ``L``). With
    ``batch_size`` set, batches have that many rows; otherwise they grow while the cost
    stays within ``token_budget`` (and ``max_batch_size``). A prompt longer than the budget
    gets a batch of its own.

    Parameters
    ----------
    lengths : sequence of int
        Prompt lengths in tokens.
    max_new_tokens : int
        Tokens generated per prompt at most.
    token_budget : int, optional
        Budget per batch (needed unless ``batch_size`` is given).
    batch_size : int, optional
        A fixed number of rows per batch.
    max_batch_size : int
        Cap on rows per batch under a budget.
    sort : bool
        Sort by length (longest first, so an out-of-memory error comes early); False keeps
        the arrival order (for comparison).

    Returns
    -------
    list of numpy arrays of row positions.

    Examples
    --------
    >>> [b.tolist() for b in plan_batches([5, 50, 10, 45], max_new_tokens=10, token_budget=120)]
    [[1, 3], [2, 0]]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        return []
    order = np.argsort(-lengths, kind="stable") if sort else np.arange(n)
    if batch_size is not None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch_size}")
        return [order[i:i + int(batch_size)] for i in range(0, n, int(batch_size))]
    if token_budget is None or token_budget < 1:
        raise ValueError("plan_batches needs a positive token_budget or a batch_size")
    batches, start = [], 0
    while start < n:
        width = int(lengths[order[start]]) + max_new_tokens
        size = 1
        while (start + size < n and size < max_batch_size
               and (size + 1) * max(width, int(lengths[order[start + size]]) + max_new_tokens)
               <= token_budget):
            width = max(width, int(lengths[order[start + size]]) + max_new_tokens)
            size += 1
        batches.append(order[start:start + size])
        start += size
    return batches


def padded_tokens(lengths: Sequence[int], batches: Sequence[np.ndarray]) -> int:
    """Prompt tokens processed with left padding: sum over batches of rows x longest prompt.

    Examples
    --------
    >>> padded_tokens([3, 5, 4], [np.array([0, 1]), np.array([2])])
    14
    """
    lengths = np.asarray(lengths)
    return int(sum(len(b) * int(lengths[b].max()) for b in batches if len(b)))


def _fingerprint(df: pd.DataFrame) -> str:
    h = pd.util.hash_pandas_object(df.astype(str), index=False).to_numpy()
    return hashlib.sha256(h.tobytes()).hexdigest()[:32]


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def _write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _normalize_prompts(prompts: pd.DataFrame) -> pd.DataFrame:
    df = prompts.reset_index(drop=True).copy()
    if "gold_label" in df.columns:
        g = df["gold_label"]
        df["gold_label"] = g.astype(object).where(g.notna(), None).map(
            lambda v: None if v is None else str(v))
    levels = {}
    for c in df.columns:
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            levels[c] = [str(x) for x in df[c].cat.categories]
            df[c] = df[c].astype(str)
    df["row_id"] = np.arange(len(df), dtype=np.int64)
    df.attrs["levels"] = levels
    return df


def _restore_levels(df: pd.DataFrame, levels: Mapping[str, Sequence[str]]) -> None:
    """Give columns back the design's level order (unseen values go last)."""
    for c, lv in levels.items():
        if c not in df.columns or df[c].isna().any():
            continue
        values = df[c].astype(str)
        extra = [v for v in pd.unique(values) if v not in set(lv)]
        df[c] = pd.Categorical(values, categories=list(lv) + extra)


class _ShardWriter:
    """Buffer generated rows and write them as atomic Parquet shards."""

    def __init__(self, folder: Path, rows: int, seconds: float):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp"):
            stale.unlink()
        existing = [int(m.group(1)) for p in folder.glob("part-*.parquet")
                    if (m := re.match(r"part-(\d+)\.parquet$", p.name))]
        self.next_index = max(existing, default=-1) + 1
        self.rows, self.seconds = rows, seconds
        self.buffer: list[dict] = []
        self.last = time.monotonic()

    def add(self, records: list[dict]) -> None:
        self.buffer.extend(records)
        if len(self.buffer) >= self.rows or time.monotonic() - self.last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        df = pd.DataFrame(self.buffer, columns=list(_SHARD_COLUMNS))
        _write_parquet_atomic(df, self.folder / f"part-{self.next_index:06d}.parquet")
        self.next_index += 1
        self.buffer = []
        self.last = time.monotonic()


def _read_shards(folder: Path) -> pd.DataFrame:
    parts = sorted(folder.glob("part-*.parquet")) if folder.exists() else []
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in _SHARD_COLUMNS})
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def _make_backend(spec: ModelSpec) -> Backend:
    return TransformersBackend(
        spec.model, tokenizer=spec.tokenizer, revision=spec.revision, device=spec.device,
        dtype=spec.dtype, trust_remote_code=spec.trust_remote_code, device_map=spec.device_map,
    )


def _generate_model(
    backend: Backend,
    todo: pd.DataFrame,
    writer: _ShardWriter,
    params: DecodingParams,
    batch_size: int | str,
    token_budget: int | None,
    max_batch_size: int,
    desc: str,
    progress: bool,
) -> dict[str, Any]:
    """Generate for the rows of ``todo`` and write them; return counters."""
    from tqdm.auto import tqdm

    system_role = backend.supports_system_role()
    rendered, users, systems = render_chats(
        todo["user_text"].tolist(), todo["system_text"].tolist(), backend.render, system_role,
        render_many=backend.render_many)
    lengths = np.asarray(backend.count_tokens(rendered), dtype=np.int64)
    if batch_size == "auto":
        budget = int(token_budget or backend.token_budget(params))
        batches = plan_batches(lengths, params.max_new_tokens, token_budget=budget,
                               max_batch_size=max_batch_size)
    else:
        budget = None
        batches = plan_batches(lengths, params.max_new_tokens, batch_size=int(batch_size))
    row_ids = todo["row_id"].to_numpy()
    queue = deque(batches)
    cap: int | None = None
    n_oom = 0
    new_tokens = prompt_tokens = 0
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), unit="row", desc=desc, disable=not progress, dynamic_ncols=True)
    try:
        while queue:
            b = queue.popleft()
            if cap is not None and len(b) > cap:
                queue.extendleft(reversed([b[i:i + cap] for i in range(0, len(b), cap)]))
                continue
            try:
                outs = backend.generate([rendered[i] for i in b], params)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                backend.clear_cache()
                if len(b) == 1:
                    raise RuntimeError(
                        f"out of memory generating a single prompt of {int(lengths[b[0]])} tokens "
                        f"with max_new_tokens={params.max_new_tokens}; lower max_new_tokens, use "
                        "a smaller dtype or a larger device"
                    ) from exc
                half = len(b) // 2
                cap = half
                n_oom += 1
                warnings.warn(f"{desc}: out of memory with {len(b)} prompts; retrying with "
                              f"batches of {half}", stacklevel=2)
                queue.appendleft(b[half:])
                queue.appendleft(b[:half])
                continue
            if len(outs) != len(b):
                raise RuntimeError(f"backend returned {len(outs)} completions for {len(b)} prompts")
            records = []
            for i, c in zip(b, outs):
                records.append({
                    "row_id": int(row_ids[i]), "response": c.text, "prompt_text": users[i],
                    "system_text": systems[i], "n_prompt_tokens": int(c.n_prompt_tokens),
                    "n_new_tokens": int(c.n_new_tokens), "finish_reason": c.finish_reason,
                })
                new_tokens += int(c.n_new_tokens)
                prompt_tokens += int(c.n_prompt_tokens)
            writer.add(records)
            bar.update(len(b))
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix({"new tok/s": f"{new_tokens / dt:.0f}",
                             "prompt tok/s": f"{prompt_tokens / dt:.0f}"}, refresh=False)
        writer.flush()
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    return {"rows": len(todo), "batches_planned": len(batches), "oom_retries": n_oom,
            "token_budget": budget, "new_tokens": int(new_tokens),
            "prompt_tokens": int(prompt_tokens), "seconds": round(elapsed, 3),
            "system_role": bool(system_role)}


def run_generation(
    prompts: pd.DataFrame,
    models: Sequence[str | ModelSpec],
    out_dir: str | Path,
    *,
    placement: str = "template",
    params: DecodingParams | None = None,
    batch_size: int | str = "auto",
    token_budget: int | None = None,
    max_batch_size: int = 256,
    resume: bool = False,
    detector: str | Callable | None = "default",
    seed: int = 0,
    backend_factory: Callable[[ModelSpec], Backend] | None = None,
    shard_rows: int = 1024,
    shard_seconds: float = 60.0,
    progress: bool = True,
    items: pd.DataFrame | None = None,
    personas=None,
    templates=None,
    tasks=None,
    fields: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Generate answers for every prompt with every model and write the tidy table.

    Parameters
    ----------
    prompts : DataFrame
        The design's prompts table (:func:`refusalstats.sample_design`) with the items'
        text columns (``premise``/``hypothesis`` or ``text``), or pass ``items=``.
    models : sequence of str or ModelSpec
        Run one after another; each is loaded, run and freed before the next. Strings
        follow :meth:`ModelSpec.parse` (``name=model@revision``).
    out_dir : str or Path
        The run directory (see the module docstring).
    placement : {"template", "system"}
        Persona in the instruction (P1) or as a system message (P2).
    params : DecodingParams, optional
        Greedy decoding with ``max_new_tokens=64`` by default.
    batch_size : int or "auto"
        Rows per batch, or "auto": batches under a token budget.
    token_budget : int, optional
        The budget for "auto" (default: the backend's estimate from free GPU memory).
    max_batch_size : int
        Cap on rows per batch under "auto".
    resume : bool
        Continue a run directory, skipping rows already written. Without it an existing
        run directory is an error (nothing is overwritten).
    detector : str, callable or None
        Refusal detector (:func:`refusalstats.detect.detector` name, called per task with
        the task's labels where it takes them, or a callable on a list of answers). None
        leaves ``refusal`` out and writes no tidy table (returns the raw rows).
    seed : int
        Seeds torch before generation; recorded in the metadata.
    backend_factory : callable, optional
        ``ModelSpec -> Backend``; default loads a :class:`TransformersBackend`.
    shard_rows, shard_seconds : int, float
        A shard is written every ``shard_rows`` rows or ``shard_seconds`` seconds,
        whichever comes first (the work a kill can lose).
    progress : bool
        Show a progress bar with rows/s and tokens/s.
    items, personas, templates, tasks, fields
        See :func:`refusalstats.inference.prompts.build_user_prompts`.

    Returns
    -------
    DataFrame
        The tidy response table (also written to ``<out_dir>/responses.parquet``).

    Examples
    --------
    >>> table = run_generation(design, ["Qwen2.5-7B=Qwen/Qwen2.5-7B-Instruct"],
    ...                        "runs/qwen7b")  # doctest: +SKIP
    """
    params = params or DecodingParams()
    if isinstance(batch_size, str) and batch_size != "auto":
        raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
    specs = [m if isinstance(m, ModelSpec) else ModelSpec.parse(str(m)) for m in models]
    if not specs:
        raise ValueError("models is empty; give at least one hub id or local model path")
    labels = [s.label for s in specs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"model name(s) {dup} appear twice; name them apart with name=model")
    out = Path(out_dir)
    run_file = out / "run.json"
    table = _normalize_prompts(prompts)
    built = build_user_prompts(table, placement, items=items, personas=personas,
                               templates=templates, tasks=tasks, fields=fields)
    fingerprint = _fingerprint(built[["row_id", "user_text", "system_text"]].fillna(""))
    if run_file.exists():
        if not resume:
            raise FileExistsError(
                f"{out} already holds a run; pass resume=True (--resume) to continue it, or "
                "choose a new output directory"
            )
        meta = json.loads(run_file.read_text())
        if meta.get("prompts_sha256") != fingerprint:
            raise ValueError(
                f"{out} was started with a different prompts table or placement "
                f"({meta.get('n_rows')} rows, placement {meta.get('placement')!r}); resume it "
                "with the same inputs or choose a new output directory"
            )
        if meta.get("decoding") != params.to_dict():
            raise ValueError(
                f"{out} was started with decoding {meta.get('decoding')}, not "
                f"{params.to_dict()}; resume with the same settings"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        _write_parquet_atomic(built, out / "prompts.parquet")
        meta = {
            "prompts_sha256": fingerprint, "n_rows": len(built), "placement": placement,
            "decoding": params.to_dict(), "seed": seed, "created": _now(), "models": {},
            "design": table.attrs.get("design"), "levels": table.attrs.get("levels", {}),
        }
        _write_json_atomic(run_file, meta)
    meta.setdefault("models", {})
    factory = backend_factory or _make_backend
    for spec in specs:
        folder = out / "shards" / _slug(spec.label)
        done = _read_shards(folder)
        done_ids = set(done["row_id"].astype(np.int64).tolist())
        todo = built[~built["row_id"].isin(done_ids)]
        entry = meta["models"].get(spec.label, {})
        entry["spec"] = asdict(spec)
        if len(todo) == 0:
            meta["models"][spec.label] = entry
            continue
        try:
            import torch

            torch.manual_seed(seed)
        except ImportError:  # pragma: no cover
            pass
        backend = factory(spec)
        try:
            entry.update({"info": backend.info(), "started": entry.get("started") or _now()})
            meta["models"][spec.label] = entry
            _write_json_atomic(run_file, meta)
            writer = _ShardWriter(folder, shard_rows, shard_seconds)
            stats = _generate_model(backend, todo, writer, params, batch_size, token_budget,
                                    max_batch_size, spec.label, progress)
        finally:
            backend.close()
            del backend
        entry.setdefault("sessions", []).append(stats)
        entry["finished"] = _now()
        meta["models"][spec.label] = entry
        _write_json_atomic(run_file, meta)
    return collect_responses(out, detector=detector, models=labels, tasks=tasks)


def collect_responses(
    out_dir: str | Path,
    *,
    detector: str | Callable | None = "default",
    models: Sequence[str] | None = None,
    tasks=None,
    allow_partial: bool = False,
) -> pd.DataFrame:
    """Assemble a run directory's shards into the tidy response table and write it.

    Every prompt must have exactly one answer per model (``allow_partial=True`` keeps
    what is there and says what is missing). A row found in two shards (only possible
    when shards were copied by hand) is kept once, with a warning.

    Parameters
    ----------
    out_dir : str or Path
        A run directory written by :func:`run_generation`.
    detector : str, callable or None
        See :func:`run_generation`.
    models : sequence of str, optional
        Model names to collect (default: all in ``run.json``).
    tasks : mapping, optional
        Task definitions for label sets (default: P1's).
    allow_partial : bool
        Assemble even when rows are missing.

    Returns
    -------
    DataFrame
        The tidy table; written to ``<out_dir>/responses.parquet`` when a detector is set.

    Examples
    --------
    >>> table = collect_responses("runs/qwen7b", detector="paper")  # doctest: +SKIP
    """
    from refusalstats.design import TASKS
    from refusalstats.table import validate, write_responses

    out = Path(out_dir)
    run_file = out / "run.json"
    if not run_file.exists():
        raise FileNotFoundError(f"{out} is not a run directory (no run.json)")
    meta = json.loads(run_file.read_text())
    prompts = pd.read_parquet(out / "prompts.parquet")
    names = list(models) if models is not None else list(meta.get("models", {}))
    frames = []
    for name in names:
        shards = _read_shards(out / "shards" / _slug(name))
        n_dup = int(shards["row_id"].duplicated().sum())
        if n_dup:
            warnings.warn(f"model {name!r}: {n_dup} row(s) appear in two shards; kept once",
                          stacklevel=2)
            shards = shards.drop_duplicates("row_id", keep="first")
        missing = len(prompts) - int(shards["row_id"].isin(prompts["row_id"]).sum())
        if missing and not allow_partial:
            raise RuntimeError(
                f"model {name!r}: {missing} of {len(prompts)} prompts have no answer yet; "
                "rerun with resume=True (--resume) to finish them"
            )
        base = prompts.drop(columns=["prompt_text", "system_text", "user_text"], errors="ignore")
        merged = base.merge(shards, on="row_id", how="inner", validate="one_to_one")
        merged.insert(0, "model", name)
        frames.append(merged)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df["model"] = pd.Categorical(df["model"], categories=names)  # run order
    df = df.sort_values(["model", "row_id"], kind="stable").reset_index(drop=True)
    _restore_levels(df, meta.get("levels", {}))
    if detector is None:
        return df
    tasks_map = dict(TASKS if tasks is None else tasks)
    refusal = np.zeros(len(df), dtype=bool)
    predicted = np.full(len(df), None, dtype=object)
    task_values = df["task"].astype(str).to_numpy()
    det_name = detector if isinstance(detector, str) else getattr(detector, "name", "custom")
    for task in pd.unique(task_values):
        mask = task_values == task
        texts = df.loc[mask, "response"].fillna("").astype(str).tolist()
        task_def = tasks_map.get(task)
        if callable(detector):
            flags = detector(texts)
        else:
            from refusalstats.detect import LabelExtractor
            from refusalstats.detect import detector as get_detector

            if detector in ("default", "hedge") and task_def is not None:
                det = get_detector(detector, labels=tuple(task_def.labels))
            elif detector in ("default", "hedge"):
                raise KeyError(
                    f"detector {detector!r} needs the label set of task {task!r}; pass tasks="
                )
            else:
                det = get_detector(detector)
            flags = det(texts)
            if task_def is not None:
                predicted[mask] = LabelExtractor(tuple(task_def.labels)).extract(texts)
        refusal[mask] = np.asarray(flags, dtype=bool)
    df["refusal"] = refusal.astype(np.int8)
    df["predicted_label"] = predicted
    meta_out = {
        "source": "refusalstats.inference", "detector": det_name,
        "placement": meta.get("placement"), "decoding": meta.get("decoding"),
        "seed": meta.get("seed"), "created": meta.get("created"), "collected": _now(),
        "models": {k: v for k, v in meta.get("models", {}).items() if k in names},
        "design": meta.get("design"), "n_prompts": meta.get("n_rows"),
    }
    table = validate(df)
    write_responses(table, out / "responses.parquet", metadata=meta_out)
    table.attrs["metadata"] = meta_out
    return table

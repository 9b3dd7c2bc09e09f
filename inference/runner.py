"""Run a prompts table through one or more models: batched, sharded, resumable.

:func:`run_generation` takes the design's prompts table and a list of models and writes
a run directory::

    <out>/run.json              run metadata (models, revisions, decoding, versions, times)
    <out>/prompts.parquet       the prompts table as run (with ``row_id``)
    <out>/shards/<model>/part-000000.parquet   generated rows, written atomically
    <out>/responses.parquet     the tidy response table the core reads

Each shard is a fragment of the tidy table: the raw generation (``row_id``, ``response``,
token counts, ...), the model label and the prompt's design columns (everything in
``prompts.parquet`` but the long text columns: the columns ``collect`` joins), and, when
the run has a detector, ``refusal`` and ``predicted_label`` computed per written shard by
the same code collect uses. The model and the design factors are stored as categoricals
with the run's level order (dictionary-encoded on disk), so ``rs.collapse(run_dir)`` and
every analysis read a run directory, finished or not, and folders of ``shard-I-of-N``
runs, straight from the shards (:mod:`refusalstats.scan`). The file's key-value metadata
(``refusalstats.shard``) names the added columns and the detector; shards written before
this (raw rows only) still resume and collect.

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

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from refusalstats.rundir import (
    LOCK_FILE,
    PROMPTS_FILE,
    RESPONSES_FILE,
    RUN_FILE,
    SHARD_GLOB,
    SHARD_METADATA_KEY,
    SHARDS_DIR,
)

from .backends import (
    DEFAULT_TEMPLATE_DATE,
    Backend,
    DecodingParams,
    TransformersBackend,
    is_out_of_memory,
    package_versions,
    template_date_kwargs,
)
from .prompts import build_user_prompts, render_chats
from .sharding import SPLIT_METHOD, ShardSpec, resolve_shard, shard_dir_name, shard_mask

__all__ = [
    "ModelSpec",
    "PromptError",
    "RunInterrupted",
    "RunLockedError",
    "ShardError",
    "collect_responses",
    "padded_tokens",
    "plan_batches",
    "run_generation",
    "session_status",
]

_SHARD_COLUMNS = ("row_id", "response", "prompt_text", "system_text", "n_prompt_tokens",
                  "n_new_tokens", "finish_reason", "truncated", "prompt_sha256", "batch_id",
                  "provider_refusal", "error")

TRUNCATE = ("error", "middle")

#: What a prompt without an answer (an API's 4xx for that prompt) does to the run.
ON_ERROR = ("record", "stop")

# The run-directory layout (file names, SHARD_METADATA_KEY: JSON with the model, the
# detector and the columns added to the raw rows, ``added``, which :func:`_read_shards`
# leaves out) has its home in the core: refusalstats.rundir.

#: The long text columns of prompts.parquet that collect does not join (nor do shards).
_PROMPT_TEXT_COLUMNS = ("prompt_text", "system_text", "user_text")


#: Default cap on rows per batch: on one H200 with a 1.2B model, 256-row batches ran
#: 1.33x faster than one budget-sized batch of 2,000 rows at a sixth of the memory
#: (benchmarks/README.md, "On one H200"); the token budget can still lower it.
DEFAULT_MAX_BATCH_SIZE = 256


class RunLockedError(OSError):
    """The run directory is in use by another live process."""


class PromptError(RuntimeError):
    """A prompt got no answer (a 4xx for that prompt) and ``on_error="stop"`` was asked for."""


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived; the rows finished so far were written first."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")


# ---------------------------------------------------------------------------- lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _requeued_slurm_owner(owner: Mapping[str, Any], me: Mapping[str, Any]) -> bool:
    """The lock was left by an earlier run of this same SLURM job (requeued, maybe elsewhere).

    SLURM runs one incarnation of a job at a time and counts restarts, so the lock of the
    same job id with another restart count belongs to a process that is gone.
    """
    return (bool(me.get("slurm_job")) and owner.get("slurm_job") == me.get("slurm_job")
            and owner.get("slurm_restart") != me.get("slurm_restart"))


class _RunLock:
    """An exclusive lock on a run directory: ``<out>/.lock`` created with O_EXCL.

    It holds the owner's host and pid; a lock left by a dead process on this host is
    stale and taken over, and so is one left by an earlier incarnation of this SLURM job
    (a requeue: same ``SLURM_JOB_ID``, another ``SLURM_RESTART_COUNT``), whatever its host.
    Any other lock from another host cannot be checked: it is reported with the file to
    remove if that run is gone.
    """

    def __init__(self, out: Path):
        self.path = out / LOCK_FILE
        self.host = socket.gethostname()
        self.held = False

    def acquire(self) -> None:
        me = {"host": self.host, "pid": os.getpid(), "since": _now()}
        if os.environ.get("SLURM_JOB_ID"):
            me["slurm_job"] = os.environ["SLURM_JOB_ID"]
            me["slurm_restart"] = os.environ.get("SLURM_RESTART_COUNT", "0")
        for _ in range(50):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    time.sleep(0.05)  # being written right now, or removed: look again
                    continue
                host, pid = owner.get("host"), int(owner.get("pid", -1))
                if _requeued_slurm_owner(owner, me):
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()  # this SLURM job's previous, dead incarnation
                    continue
                if host == self.host and pid != os.getpid() and not _pid_alive(pid):
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()  # stale: its process is gone
                    continue
                raise RunLockedError(
                    f"{self.path.parent} is in use by another run (pid {pid} on {host}, since "
                    f"{owner.get('since')}); wait for it to end, or remove {self.path} if that "
                    "process is gone"
                ) from None
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(me))
            self.held = True
            return
        raise RunLockedError(f"could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.held = False


# ---------------------------------------------------------------------------- signals
class _Signals:
    """Turn SIGTERM / SIGINT into :class:`RunInterrupted`, deferred while a shard is written.

    Installed only in the main thread (Python delivers signals there).
    """

    def __init__(self):
        self.critical = 0
        self.pending: int | None = None
        self.previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.critical:
            self.pending = signum
            return
        raise RunInterrupted(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, h in self.previous.items():
            signal.signal(sig, h)
        self.previous.clear()
        return False

    @contextlib.contextmanager
    def shielded(self):
        """No interruption inside (a shard write and its bookkeeping); raise after."""
        self.critical += 1
        try:
            yield
        finally:
            self.critical -= 1
        if not self.critical and self.pending is not None:
            signum, self.pending = self.pending, None
            raise RunInterrupted(signum)


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
    revision, tokenizer, dtype, device, trust_remote_code, device_map, attn_implementation
        Passed to :class:`~refusalstats.inference.backends.TransformersBackend`.
    backend : {"transformers", "openai"}
        The engine; ``"openai"`` sends the chats to an OpenAI-compatible server
        (:class:`~refusalstats.inference.openai_compat.OpenAIBackend`).
    base_url, api_key_env, concurrency, request_timeout, max_retries, extra_body
        Settings of the openai backend; ``api_key_env`` is the name of the environment
        variable holding the key, never the key.

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
    attn_implementation: str | None = None
    backend: str = "transformers"
    base_url: str | None = None
    api_key_env: str | None = None
    concurrency: int = 8
    request_timeout: float = 120.0
    max_retries: int = 8
    extra_body: dict | None = None

    def __post_init__(self):
        if self.backend not in ("transformers", "openai"):
            raise ValueError(f"backend must be 'transformers' or 'openai', got {self.backend!r}")
        if self.backend == "openai" and self.revision is not None:
            raise ValueError(f"model {self.model!r}@{self.revision}: the openai backend takes no "
                             "revision; name the served model as the server does")

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
        if "@" in text and not Path(text).exists() and kwargs.get("backend") != "openai":
            text, revision = text.rsplit("@", 1)
        if not text:
            raise ValueError("--model needs a hub id or a path, e.g. --model Llama2-13B=meta-llama/...")
        return cls(model=text, name=name or None, revision=revision, **kwargs)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _shard_dir_name(label: str) -> str:
    """Folder of a model's shards: readable slug plus a hash of the exact name.

    "Llama 2" and "Llama_2" share a slug but not a folder.

    Examples
    --------
    >>> _shard_dir_name("Llama 2") != _shard_dir_name("Llama_2")
    True
    """
    return f"{_slug(label)}-{hashlib.sha256(label.encode()).hexdigest()[:8]}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def plan_batches(
    lengths: Sequence[int],
    max_new_tokens: int,
    token_budget: int | None = None,
    batch_size: int | None = None,
    max_batch_size: int | None = None,
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
    max_batch_size : int, optional
        Cap on rows per batch under a budget (default: none; the budget decides).
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
    cap = n if max_batch_size is None else int(max_batch_size)
    batches, start = [], 0
    while start < n:
        width = int(lengths[order[start]]) + max_new_tokens
        size = 1
        while (start + size < n and size < cap
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def _write_parquet_atomic(df: pd.DataFrame, path: Path, metadata: Mapping[str, Any] | None = None
                          ) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if metadata is None:
        df.to_parquet(tmp, index=False)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(df, preserve_index=False)
        # a column of only None (gold_label of a batch without gold) is typed null: store
        # it as text so every shard of a run has one schema
        for i, f in enumerate(table.schema):
            if pa.types.is_null(f.type):
                table = table.set_column(i, pa.field(f.name, pa.string()),
                                         table.column(i).cast(pa.string()))
        meta = dict(table.schema.metadata or {})
        meta[SHARD_METADATA_KEY] = json.dumps(dict(metadata), default=str).encode()
        pq.write_table(table.replace_schema_metadata(meta), tmp)
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


class _ShardLabels:
    """Turn a batch of raw rows into a fragment of the tidy table, as collect builds it.

    The prompts' design columns are joined on ``row_id`` (prompts.parquet without the
    long text columns, exactly collect's join), the model label is put first, the
    design's level order restored and, with a detector, ``refusal`` and
    ``predicted_label`` added by :func:`_detect_refusals` (collect's code path). Returns
    the rows and the shard's metadata.
    """

    def __init__(self, prompts: pd.DataFrame, model: str, models: Sequence[str],
                 levels: Mapping[str, Sequence[str]], detector: str | Callable | None, tasks):
        self.base = prompts.drop(columns=list(_PROMPT_TEXT_COLUMNS), errors="ignore")
        self.model, self.models = model, list(models)
        self.levels, self.detector, self.tasks = dict(levels or {}), detector, tasks

    def __call__(self, raw: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
        df = self.base.merge(raw, on="row_id", how="inner", validate="one_to_one")
        df.insert(0, "model", pd.Categorical([self.model] * len(df), categories=self.models))
        _restore_levels(df, self.levels)
        det_name = None
        if self.detector is not None:
            df, det_name = _detect_refusals(df, self.detector, self.tasks)
        added = [c for c in df.columns if c not in set(raw.columns)]
        return df, {"version": 2, "model": self.model, "detector": det_name, "added": added}


class _ShardWriter:
    """Buffer generated rows and write them as atomic Parquet shards.

    Shard names carry the session and a random tag (``part-000003-s02-9f3a1c.parquet``),
    so no two processes ever write the same file, even without the lock. With ``label``
    (a :class:`_ShardLabels`) every shard is written as a labelled fragment of the tidy
    table; should labelling fail, the raw rows are written (and collect labels them).
    """

    def __init__(self, folder: Path, rows: int, seconds: float, session: int,
                 signals: _Signals | None = None, label: _ShardLabels | None = None):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp"):  # the run lock is held: no one else writes here
            stale.unlink()
        existing = [int(m.group(1)) for p in folder.glob(SHARD_GLOB)
                    if (m := re.match(r"part-(\d+)", p.name))]
        self.next_index = max(existing, default=-1) + 1
        self.tag = f"s{session:02d}-{secrets.token_hex(3)}"
        self.rows, self.seconds = int(rows), float(seconds)
        self.buffer: list[dict] = []
        self.written = 0
        self.last = time.monotonic()
        self.signals = signals
        self.label = label

    def add(self, records: list[dict]) -> None:
        self.buffer.extend(records)
        if len(self.buffer) >= self.rows or time.monotonic() - self.last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        shield = self.signals.shielded() if self.signals else contextlib.nullcontext()
        with shield:
            extra = dict.fromkeys(k for r in self.buffer for k in r if k not in _SHARD_COLUMNS)
            df = pd.DataFrame(self.buffer, columns=list(_SHARD_COLUMNS) + list(extra))
            name = f"part-{self.next_index:06d}-{self.tag}.parquet"
            meta = None
            if self.label is not None:
                try:
                    df, meta = self.label(df)
                except Exception as exc:  # noqa: BLE001 - never lose generated rows to a labelling error
                    warnings.warn(f"shard {name} written without labels ({type(exc).__name__}: "
                                  f"{exc}); `refusalstats collect` labels it", stacklevel=2)
                    self.label = None
            _write_parquet_atomic(df, self.folder / name, meta)
            self.next_index += 1
            self.written += len(self.buffer)
            self.buffer = []
            self.last = time.monotonic()


class ShardError(ValueError):
    """A shard file cannot be read (truncated or corrupted); the message names it."""


def _raw_part(path: Path) -> pd.DataFrame:
    """One shard's raw rows: a labelled shard without the columns labelling added."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        info = (schema.metadata or {}).get(SHARD_METADATA_KEY)
        if info is None:  # a shard written before shards were labelled
            return pd.read_parquet(path)
        added = set(json.loads(info).get("added", []))
        return pd.read_parquet(path, columns=[c for c in schema.names if c not in added])
    except (pa.ArrowException, OSError, ValueError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ShardError(
            f"shard {path} cannot be read (truncated or corrupted: {detail}); `generate "
            "--resume` sets it aside as *.corrupt and generates its rows again, or delete it "
            "yourself") from None


def _read_shards(folder: Path, *, set_aside: bool = False) -> pd.DataFrame:
    """The raw generated rows of a model's shards (old and labelled shards alike).

    An unreadable shard raises :class:`ShardError` naming it; with ``set_aside`` (a
    resume, under the run lock) it is renamed ``<name>.corrupt`` with a warning instead,
    so its rows count as not done and are generated again.
    """
    parts = sorted(folder.glob(SHARD_GLOB)) if folder.exists() else []
    frames = []
    for p in parts:
        try:
            frames.append(_raw_part(p))
        except ShardError as exc:
            if not set_aside:
                raise
            os.replace(p, p.with_name(p.name + ".corrupt"))
            warnings.warn(f"{exc}; set aside as {p.name}.corrupt, its rows are generated again",
                          stacklevel=2)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in _SHARD_COLUMNS})
    return pd.concat(frames, ignore_index=True)


def _make_backend(spec: ModelSpec) -> Backend:
    if spec.backend == "openai":
        from .openai_compat import OpenAIBackend

        return OpenAIBackend(spec.model, base_url=spec.base_url, api_key_env=spec.api_key_env,
                             concurrency=spec.concurrency, timeout=spec.request_timeout,
                             max_retries=spec.max_retries, extra_body=spec.extra_body)
    return TransformersBackend(
        spec.model, tokenizer=spec.tokenizer, revision=spec.revision, device=spec.device,
        dtype=spec.dtype, trust_remote_code=spec.trust_remote_code, device_map=spec.device_map,
        attn_implementation=spec.attn_implementation,
    )


def _prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _generate_model(
    backend: Backend,
    todo: pd.DataFrame,
    writer: _ShardWriter,
    params: DecodingParams,
    batch_size: int | str,
    token_budget: int | None,
    max_batch_size: int | None,
    desc: str,
    progress: bool,
    truncate: str,
    session: int,
    stats: dict[str, Any],
    on_error: str = "record",
) -> None:
    """Generate for the rows of ``todo`` and write them; counters go into ``stats``.

    The rows finished are flushed to a shard whatever ends the loop (an error, SIGTERM,
    Ctrl-C), so a resume redoes only what was not finished.
    """
    from tqdm.auto import tqdm

    system_role = backend.supports_system_role()
    stats["system_role"] = bool(system_role)
    rendered, users, systems = render_chats(
        todo["user_text"].tolist(), todo["system_text"].tolist(), backend.render, system_role,
        render_many=backend.render_many)
    lengths = np.asarray(backend.count_tokens(rendered), dtype=np.int64)
    mnt = int(params.max_new_tokens)
    row_ids = todo["row_id"].to_numpy()
    truncated = np.zeros(len(todo), dtype=bool)
    limit = backend.max_positions()
    if limit is not None and len(lengths):
        if limit - mnt < 2:
            raise ValueError(f"max_new_tokens={mnt} leaves no room for a prompt in {desc}'s "
                             f"context of {limit} positions; lower max_new_tokens")
        over = np.flatnonzero(lengths + mnt > limit)
        if len(over) and truncate == "error":
            worst = over[np.argmax(lengths[over])]
            raise ValueError(
                f"{len(over)} prompt(s) do not fit {desc}'s context of {limit} positions: the "
                f"longest (row_id {int(row_ids[worst])}) has {int(lengths[worst])} tokens + "
                f"max_new_tokens {mnt}; shorten them, lower max_new_tokens, or pass "
                "truncate='middle' (--truncate middle) to cut the middle out of them (flagged "
                "in the 'truncated' column)")
        if len(over):
            cut = backend.truncate_prompts([rendered[i] for i in over], limit - mnt)
            for i, text in zip(over, cut):
                rendered[i] = text
            lengths[over] = limit - mnt  # the backend keeps the ids exactly as cut
            truncated[over] = True
            warnings.warn(f"{desc}: {len(over)} prompt(s) longer than the context of {limit} "
                          f"positions were cut in the middle to {limit - mnt} tokens "
                          "(column 'truncated')", stacklevel=3)
    hashes = [_prompt_hash(r) for r in rendered]
    engine_cap = backend.max_batch_rows()
    if engine_cap is not None:
        max_batch_size = engine_cap if max_batch_size is None else min(max_batch_size, engine_cap)
    if batch_size == "auto":
        budget = int(token_budget or backend.token_budget(params))
        batches = plan_batches(lengths, mnt, token_budget=budget, max_batch_size=max_batch_size)
    else:
        budget = None
        batches = plan_batches(lengths, mnt, batch_size=int(batch_size))
    stats.update(token_budget=budget, batches_planned=len(batches), oom_retries=0,
                 error_rows=0, provider_refusals=0, empty_answers=0,
                 truncated=int(truncated.sum()),
                 max_batch_rows=max((len(b) for b in batches), default=0))
    queue = deque(batches)
    oom_budget: int | None = None  # tokens per batch after an out-of-memory error
    n_batch = 0
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), unit="row", desc=desc, disable=not progress, dynamic_ncols=True)
    try:
        while queue:
            b = queue.popleft()
            cost = len(b) * (int(lengths[b].max()) + mnt)
            if oom_budget is not None and cost > oom_budget and len(b) > 1:
                # a token cap, not a row cap: shorter prompts fit more rows again
                parts = plan_batches(lengths[b], mnt, token_budget=oom_budget,
                                     max_batch_size=len(b))
                queue.extendleft(reversed([b[q] for q in parts]))
                continue
            oom = None
            stop_error = None
            try:
                outs = backend.generate([rendered[i] for i in b], params)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                oom = f"{type(exc).__name__}: {str(exc)[:200]}"
            if oom is not None:
                # outside the except block: the traceback (and the tensors its frames hold)
                # is gone, so the cache really frees
                backend.clear_cache()
                if len(b) == 1:
                    raise RuntimeError(
                        f"out of memory generating a single prompt of {int(lengths[b[0]])} tokens "
                        f"with max_new_tokens={mnt}; lower max_new_tokens, use a smaller dtype or "
                        f"a larger device ({oom})"
                    )
                oom_budget = cost // 2 if oom_budget is None else min(oom_budget, cost // 2)
                stats["oom_retries"] += 1
                stats["oom_token_budget"] = oom_budget
                warnings.warn(f"{desc}: out of memory with {len(b)} prompts ({cost:,} tokens); "
                              f"retrying with batches of at most {oom_budget:,} tokens",
                              stacklevel=3)
                queue.appendleft(b)
                continue
            if len(outs) != len(b):
                raise RuntimeError(f"backend returned {len(outs)} completions for {len(b)} prompts")
            failed = [(i, c) for i, c in zip(b, outs) if getattr(c, "error", None)]
            if failed and on_error == "stop":
                keep = [k for k, c in enumerate(outs) if not getattr(c, "error", None)]
                b, outs = b[keep], [outs[k] for k in keep]
                i0, c0 = failed[0]
                stop_error = PromptError(
                    f"{desc}: row_id {int(row_ids[i0])} got no answer ({c0.error}); "
                    f"{len(failed)} such prompt(s) in this batch. The other rows are written; "
                    "continue with --resume --on-error record (on_error='record') to record "
                    "such prompts as error rows (refusal_source 'error') and go on")
            batch_id = f"s{session:02d}-b{n_batch:06d}"
            n_batch += 1
            records = []
            for i, c in zip(b, outs):
                rec = {
                    "row_id": int(row_ids[i]), "response": c.text, "prompt_text": users[i],
                    "system_text": systems[i], "n_prompt_tokens": int(c.n_prompt_tokens),
                    "n_new_tokens": int(c.n_new_tokens), "finish_reason": c.finish_reason,
                    "truncated": bool(truncated[i]), "prompt_sha256": hashes[i],
                    "batch_id": batch_id,
                    "provider_refusal": getattr(c, "provider_refusal", None),
                    "error": getattr(c, "error", None),
                }
                for k, v in (getattr(c, "extra", None) or {}).items():
                    rec.setdefault(k, v)  # engine columns never replace the runner's
                records.append(rec)
                stats["new_tokens"] += int(c.n_new_tokens)
                stats["prompt_tokens"] += int(c.n_prompt_tokens)
                stats["error_rows"] += bool(rec["error"])
                stats["provider_refusals"] += bool(rec["provider_refusal"])
                stats["empty_answers"] += not rec["error"] and not str(c.text).strip()
            writer.add(records)
            stats["rows"] += len(b)
            bar.update(len(b))
            if stop_error is not None:
                raise stop_error
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix({"new tok/s": f"{stats['new_tokens'] / dt:.0f}",
                             "prompt tok/s": f"{stats['prompt_tokens'] / dt:.0f}"}, refresh=False)
    finally:
        try:
            writer.flush()
        finally:
            bar.close()
            stats["rows_written"] = writer.written
            stats["seconds"] = round(time.perf_counter() - t0, 3)


def run_generation(
    prompts: pd.DataFrame,
    models: Sequence[str | ModelSpec],
    out_dir: str | Path,
    *,
    placement: str = "template",
    params: DecodingParams | None = None,
    batch_size: int | str = "auto",
    token_budget: int | None = None,
    max_batch_size: int | None = DEFAULT_MAX_BATCH_SIZE,
    resume: bool = False,
    detector: str | Callable | None = "default",
    seed: int = 0,
    backend_factory: Callable[[ModelSpec], Backend] | None = None,
    shard_rows: int = 1024,
    shard_seconds: float = 60.0,
    progress: bool = True,
    truncate: str = "error",
    template_date: str = DEFAULT_TEMPLATE_DATE,
    items: pd.DataFrame | None = None,
    personas=None,
    templates=None,
    tasks=None,
    fields: Mapping[str, Sequence[str]] | None = None,
    shard: str | ShardSpec | tuple[int, int] | None = None,
    on_error: str = "record",
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
        The run directory (see the module docstring). One run at a time: a second run on
        the same directory raises :class:`RunLockedError`.
    placement : {"template", "system"}
        Persona in the instruction (P1) or as a system message (P2).
    params : DecodingParams, optional
        Greedy decoding with ``max_new_tokens=64`` by default.
    batch_size : int or "auto"
        Rows per batch, or "auto": batches under a token budget.
    token_budget : int, optional
        The budget for "auto" (default: the backend's estimate from free GPU memory).
    max_batch_size : int, optional
        Cap on rows per batch under "auto" (default 256, see DEFAULT_MAX_BATCH_SIZE; None:
        the token budget alone decides).
    resume : bool
        Continue a run directory, skipping rows already written. Without it an existing
        run directory is an error (nothing is overwritten). A model whose identity
        (source, revision, config, dtype) differs from the one that started is refused.
    detector : str, callable or None
        Refusal detector (:func:`refusalstats.detect.detector` name, called per task with
        the task's labels where it takes them, or a callable on a list of answers). It
        labels every shard as it is written (so the shards are read directly, see the
        module docstring) and the collected table. None leaves ``refusal`` out and writes
        no tidy table (returns the raw rows).
    seed : int
        Seeds torch before generation; recorded in the metadata.
    backend_factory : callable, optional
        ``ModelSpec -> Backend``; default loads a :class:`TransformersBackend`.
    shard_rows, shard_seconds : int, float
        A shard is written every ``shard_rows`` rows or ``shard_seconds`` seconds,
        whichever comes first (the work a SIGKILL can lose; SIGTERM and SIGINT write
        the finished rows first and raise :class:`RunInterrupted`).
    progress : bool
        Show a progress bar with rows/s and tokens/s, and "resuming: N of M done".
    truncate : {"error", "middle"}
        A prompt that does not fit the model's context with ``max_new_tokens`` is an
        error, or is cut in the middle (column ``truncated``).
    template_date : str
        The date chat templates see as today (ISO), recorded; a resume must use the same.
    items, personas, templates, tasks, fields
        See :func:`refusalstats.inference.prompts.build_user_prompts`.
    shard : "I/N", (I, N) or ShardSpec, optional
        Run only shard ``I`` of ``N`` (0-based; whole items, see
        :mod:`refusalstats.inference.sharding`) into ``<out_dir>/shard-I-of-N``, a run
        directory of its own (lock, metadata, resume). ``row_id`` stays the row's position
        in the full table; :func:`refusalstats.inference.collect_runs` merges the shards.
        The environment (SLURM, torchrun) is read by the CLI, not here.
    on_error : {"record", "stop"}
        A prompt the engine answers with an error of its own (an API's 4xx for that prompt,
        e.g. a prompt too long) is recorded as a row with the error text in ``error``,
        ``refusal_source = "error"`` and no refusal value, and the run goes on
        (``"record"``, the default; analyses leave such rows out and say how many), or
        stops the run after writing the batch's other rows (``"stop"``). Errors about the
        whole run (a bad key, an unknown model) always stop it.

    Returns
    -------
    DataFrame
        The tidy response table (also written to ``<out_dir>/responses.parquet``); for a
        shard, that shard's rows.

    Examples
    --------
    >>> table = run_generation(design, ["Qwen2.5-7B=Qwen/Qwen2.5-7B-Instruct"],
    ...                        "runs/qwen7b")  # doctest: +SKIP
    """
    params = params or DecodingParams()
    if isinstance(batch_size, str) and batch_size != "auto":
        raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
    if max_batch_size is not None and int(max_batch_size) < 1:
        raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
    if truncate not in TRUNCATE:
        raise ValueError(f"truncate must be one of {TRUNCATE}, got {truncate!r}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if int(shard_rows) < 1 or not float(shard_seconds) > 0:
        raise ValueError(f"shard_rows must be >= 1 and shard_seconds > 0, got {shard_rows} and "
                         f"{shard_seconds}")
    template_date_kwargs(template_date)  # validates the date
    specs = [m if isinstance(m, ModelSpec) else ModelSpec.parse(str(m)) for m in models]
    if not specs:
        raise ValueError("models is empty; give at least one hub id or local model path")
    labels = [s.label for s in specs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"model name(s) {dup} appear twice; name them apart with name=model")
    out = Path(out_dir)
    table = _normalize_prompts(prompts)
    built = build_user_prompts(table, placement, items=items, personas=personas,
                               templates=templates, tasks=tasks, fields=fields)
    fingerprint = _fingerprint(built[["row_id", "user_text", "system_text"]].fillna(""))
    shard_spec = resolve_shard(shard, env={}) if shard is not None else None
    shard_meta = {"index": 0, "count": 1, "source": None, "method": SPLIT_METHOD,
                  "n_rows_total": len(built), "prompts_sha256_total": fingerprint}
    if shard_spec is not None:
        mask = shard_mask(table, shard_spec)
        if not mask.any():
            raise ValueError(
                f"shard {shard_spec} (from {shard_spec.source}) has no prompts: "
                f"{len(table)} prompts do not reach {shard_spec.count} shards of whole items; "
                "use fewer shards")
        built = built[built["row_id"].isin(table.loc[mask, "row_id"])].reset_index(drop=True)
        fingerprint = _fingerprint(built[["row_id", "user_text", "system_text"]].fillna(""))
        shard_meta.update(index=shard_spec.index, count=shard_spec.count,
                          source=shard_spec.source)
        out = out / shard_dir_name(shard_spec)
        if progress:
            print(f"shard {shard_spec} (from {shard_spec.source}): {len(built):,} of "
                  f"{shard_meta['n_rows_total']:,} prompts -> {out}", file=sys.stderr, flush=True)
    if (out / RUN_FILE).exists() and not resume:
        raise FileExistsError(
            f"{out} already holds a run; pass resume=True (--resume) to continue it, or "
            "choose a new output directory"
        )
    out.mkdir(parents=True, exist_ok=True)
    lock = _RunLock(out)
    lock.acquire()
    try:
        with _Signals() as signals:
            _run_locked(out, specs, built, table, fingerprint, placement, params, batch_size,
                        token_budget, max_batch_size, resume, seed, backend_factory, shard_rows,
                        shard_seconds, progress, truncate, str(template_date), signals,
                        shard_meta, detector, tasks, on_error)
    finally:
        lock.release()
    return collect_responses(out, detector=detector, models=labels, tasks=tasks)


def _mark_dead_sessions(meta: dict) -> int:
    """Sessions recorded as running whose process is gone: marked ``"died"``; their count.

    Called with the run lock held, so no other live process writes this run: a session
    still marked running ended without recording it (SIGKILL, power loss, a node lost).
    """
    n = 0
    for entry in (meta.get("models") or {}).values():
        for sess in entry.get("sessions", []):
            if sess.get("status") == "running":
                sess["status"] = "died"
                sess["note"] = ("ended without recording its end (killed, or its machine "
                                f"went down); found dead at {_now()}")
                n += 1
    return n


def session_status(run_dir: str | Path) -> list[dict]:
    """Every session of a run directory with its status, a dead "running" one told apart.

    A session recorded as ``"running"`` is reported ``"died"`` when its process is gone:
    the run's lock is free or stale (its pid is not alive on this host), or the session's
    pid is not alive on this host.

    Examples
    --------
    >>> [s["status"] for s in session_status("runs/p1")]  # doctest: +SKIP
    ['died', 'complete']
    """
    out = Path(run_dir)
    meta = json.loads((out / RUN_FILE).read_text())
    host = socket.gethostname()
    lock_live = False
    try:
        owner = json.loads((out / LOCK_FILE).read_text())
        lock_live = owner.get("host") != host or _pid_alive(int(owner.get("pid", -1)))
    except (OSError, ValueError):
        pass
    rows = []
    for name, entry in (meta.get("models") or {}).items():
        for sess in entry.get("sessions", []):
            row = {"model": name, **{k: v for k, v in sess.items() if k != "versions"}}
            if row.get("status") == "running":
                same_host = row.get("host") == host
                dead = not lock_live or (same_host and not _pid_alive(int(row.get("pid", -1))))
                if dead:
                    row["status"] = "died"
            rows.append(row)
    return rows


def _resolved_source(spec: ModelSpec) -> str:
    p = Path(spec.model)
    return str(p.resolve()) if p.is_dir() else spec.model


def _identity_mismatch(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def _run_locked(out, specs, built, table, fingerprint, placement, params, batch_size,
                token_budget, max_batch_size, resume, seed, backend_factory, shard_rows,
                shard_seconds, progress, truncate, template_date, signals, shard_meta,
                detector=None, tasks=None, on_error="record") -> None:
    run_file = out / RUN_FILE
    if run_file.exists():
        if not resume:  # another run created it between the first check and the lock
            raise FileExistsError(f"{out} already holds a run; pass resume=True (--resume)")
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
        if meta.get("template_date", template_date) != template_date:
            raise ValueError(
                f"{out} was started with template_date {meta['template_date']!r}, not "
                f"{template_date!r}; resume with the same date (--template-date)"
            )
    else:
        _write_parquet_atomic(built, out / PROMPTS_FILE)
        meta = {
            "prompts_sha256": fingerprint, "n_rows": len(built), "placement": placement,
            "decoding": params.to_dict(), "seed": seed, "template_date": template_date,
            "created": _now(), "models": {},
            "design": table.attrs.get("design"), "levels": table.attrs.get("levels", {}),
            "shard": shard_meta,
        }
        _write_json_atomic(run_file, meta)
    meta.setdefault("models", {})
    meta.setdefault("template_date", template_date)
    if _mark_dead_sessions(meta):
        _write_json_atomic(run_file, meta)
    # every model this run is to answer with (rows expected = prompts x these): lets a
    # reader of the shards tell a partial run before a model has started
    run_models = list(dict.fromkeys([*meta.get("planned_models", []), *meta["models"],
                                     *(s.label for s in specs)]))
    meta["planned_models"] = run_models
    prompts_written = pd.read_parquet(out / PROMPTS_FILE)  # what collect joins
    folders = {}
    for spec in specs:
        entry = meta["models"].get(spec.label, {})
        # runs started before shard folders carried a hash keep their folder
        folders[spec.label] = entry.get("shard_dir") or (
            _slug(spec.label) if "info" in entry else _shard_dir_name(spec.label))
    factory = backend_factory or _make_backend
    for spec in specs:
        label = spec.label
        entry = meta["models"].get(label, {})
        entry["shard_dir"] = folders[label]
        folder = out / SHARDS_DIR / folders[label]
        done = _read_shards(folder, set_aside=True)
        done_ids = set(done["row_id"].astype(np.int64).tolist())
        todo = built[~built["row_id"].isin(done_ids)]
        n_done = len(built) - len(todo)
        old_identity = entry.get("identity")
        if old_identity and backend_factory is None:
            src = _resolved_source(spec)
            if old_identity.get("model") not in (None, src) and not Path(spec.model).is_dir():
                raise ValueError(
                    f"model {label!r} in {out} was generated with {old_identity.get('model')!r}, "
                    f"not {src!r}; resume with the same model, or give this one another name")
        entry["spec"] = asdict(spec)
        meta["models"][label] = entry
        if len(todo) == 0:
            continue
        if n_done and progress:
            print(f"{label}: resuming: {n_done:,} of {len(built):,} done, {len(todo):,} to go",
                  file=sys.stderr, flush=True)
        try:
            import torch

            torch.manual_seed(seed)
        except ImportError:  # pragma: no cover
            pass
        backend = factory(spec)
        sessions = entry.setdefault("sessions", [])
        session = len(sessions)
        stats: dict[str, Any] = {
            "session": session, "host": socket.gethostname(), "pid": os.getpid(),
            "started": _now(), "status": "running", "rows_done_before": n_done, "rows": 0,
            "new_tokens": 0, "prompt_tokens": 0, "versions": package_versions(),
        }
        try:
            backend.template_date = template_date
            info = backend.info()
            identity = dict(backend.identity())
            if "dtype" in info:
                identity["dtype"] = info["dtype"]
            if old_identity:
                diff = _identity_mismatch(old_identity, identity)
                if diff:
                    raise ValueError(
                        f"model {label!r} in {out} was started with another model ("
                        + "; ".join(diff) + "); resume with the same model, or give this one "
                        "another name (NAME=MODEL)")
            entry.update({"info": info, "identity": identity,
                          "started": entry.get("started") or _now()})
            stats["identity"] = identity
            sessions.append(stats)
            _write_json_atomic(run_file, meta)
            labels = _ShardLabels(prompts_written, label, run_models, meta.get("levels", {}),
                                  detector, tasks)
            writer = _ShardWriter(folder, shard_rows, shard_seconds, session, signals, labels)
            _generate_model(backend, todo, writer, params, batch_size, token_budget,
                            max_batch_size, label, progress, truncate, session, stats, on_error)
            stats["status"] = "complete"
            if stats.get("error_rows") or stats.get("provider_refusals"):
                warnings.warn(
                    f"{label}: {stats.get('error_rows', 0):,} prompt(s) got no answer (error rows: "
                    f"refusal_source 'error', text in column 'error', left out of analyses) and "
                    f"{stats.get('provider_refusals', 0):,} were refused by the provider "
                    "(refusal_source 'provider', counted as refusals)", stacklevel=3)
            entry["finished"] = _now()
        except BaseException as exc:
            stats["status"] = ("interrupted" if isinstance(exc, KeyboardInterrupt)
                               else f"failed: {type(exc).__name__}")
            raise
        finally:
            stats["finished"] = _now()
            if stats in sessions:
                with signals.shielded():
                    _write_json_atomic(run_file, meta)
            backend.close()
            del backend


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
    from refusalstats.table import validate, write_responses

    out = Path(out_dir)
    run_file = out / RUN_FILE
    if not run_file.exists():
        raise FileNotFoundError(f"{out} is not a run directory (no run.json)")
    meta = json.loads(run_file.read_text())
    prompts = pd.read_parquet(out / PROMPTS_FILE)
    names = list(models) if models is not None else list(meta.get("models", {}))
    frames = []
    for name in names:
        entry = meta.get("models", {}).get(name, {})
        shards = _read_shards(out / SHARDS_DIR / (entry.get("shard_dir") or _slug(name)))
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
    df, det_name = _detect_refusals(df, detector, tasks)
    meta_out = {
        "source": "refusalstats.inference", "detector": det_name,
        "placement": meta.get("placement"), "decoding": meta.get("decoding"),
        "seed": meta.get("seed"), "created": meta.get("created"), "collected": _now(),
        "models": {k: v for k, v in meta.get("models", {}).items() if k in names},
        "design": meta.get("design"), "n_prompts": meta.get("n_rows"),
    }
    table = validate(df, error_rows="keep")
    write_responses(table, out / RESPONSES_FILE, metadata=meta_out)
    table.attrs["metadata"] = meta_out
    return table


def _flagged(df: pd.DataFrame, column: str) -> np.ndarray:
    """Rows whose ``column`` (text, may be absent: shards of older runs) is set."""
    if column not in df.columns:
        return np.zeros(len(df), dtype=bool)
    col = df[column]
    return (col.notna() & (col.astype(str).str.len() > 0)).to_numpy(dtype=bool)


def _detect_refusals(df: pd.DataFrame, detector: str | Callable, tasks=None
                     ) -> tuple[pd.DataFrame, str]:
    """Add ``refusal``, ``refusal_source``, ``empty_response`` and ``predicted_label``.

    The detector runs task by task (each with its label set). Then the engine's own
    outcomes decide (the documented mapping from API outcomes to the table):

    =========================================  =========  ==================
    outcome                                    refusal    ``refusal_source``
    =========================================  =========  ==================
    an answer                                  detector   ``"detector"``
    provider refusal (``content_filter``,      1          ``"provider"``
    ``message.refusal``, no message, a 4xx
    policy rejection: ``provider_refusal``)
    no answer (a 4xx for the prompt: ``error``)  missing  ``"error"``
    =========================================  =========  ==================

    ``empty_response`` flags answers that are empty or blank (not error rows). With
    error rows ``refusal`` is a nullable ``Int8``; analyses leave those rows out
    (:func:`refusalstats.table.validate`).
    """
    from refusalstats.design import TASKS

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
    provider = _flagged(df, "provider_refusal")
    error = _flagged(df, "error")
    refusal |= provider
    if error.any():
        values = pd.array(refusal.astype(np.int8), dtype="Int8")
        values[error] = pd.NA
        df["refusal"] = values
        predicted[error] = None
    else:
        df["refusal"] = refusal.astype(np.int8)
    df["refusal_source"] = np.where(error, "error", np.where(provider, "provider", "detector"))
    blank = df["response"].fillna("").astype(str).str.strip().eq("").to_numpy()
    df["empty_response"] = blank & ~error
    df["predicted_label"] = predicted
    return df, det_name

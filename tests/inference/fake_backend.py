"""Deterministic backends for runner tests (no model): answers derived from the prompt."""

from __future__ import annotations

import hashlib
import os
import sys
import time

from refusalstats.inference.backends import Backend, Completion


def answer_for(prompt: str) -> str:
    """The answer the fake backend gives to a rendered prompt (a pure function of it)."""
    h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    return "I'm sorry, I cannot answer that." if h % 4 == 0 else f"neutral {h % 1000}"


def _cuda_oom():
    import torch

    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")


class EchoBackend(Backend):
    """Renders chats as role-tagged text and answers with :func:`answer_for`.

    ``hold_after=k`` answers k batches, then blocks in the next call (writing ``hold`` to
    ``progress_file``) until a signal ends it, so a test kills the run at a known point
    instead of racing a timer (it replaces a per-batch sleep); ``oom_once_above`` raises
    ``torch.cuda.OutOfMemoryError`` the first time a batch has more rows than that (torch
    is imported only to raise it).
    """

    engine = "echo"

    def __init__(self, model_id: str = "echo",
                 oom_once_above: int | None = None, oom_always_above: int | None = None,
                 oom_above_tokens: int | None = None, max_new_tokens_cost: int = 0,
                 context: int | None = None, progress_file: str | None = None,
                 hold_after: int | None = None):
        self.model_id = model_id
        self.oom_once_above = oom_once_above
        self.oom_always_above = oom_always_above
        self.oom_above_tokens = oom_above_tokens
        self.max_new_tokens_cost = max_new_tokens_cost
        self.context = context
        self.progress_file = progress_file
        self.hold_after = hold_after
        self.batch_sizes: list[int] = []
        self.batch_costs: list[int] = []
        self.cleared_in_except: list[bool] = []
        self.closed = False

    def max_positions(self):
        return self.context

    def truncate_prompts(self, prompts, max_tokens):
        out = []
        for p in prompts:
            w = p.split()
            out.append(p if len(w) <= max_tokens else
                       " ".join(w[:max_tokens // 2] + w[len(w) - (max_tokens - max_tokens // 2):]))
        return out

    def clear_cache(self):
        import sys

        self.cleared_in_except.append(sys.exc_info()[0] is not None)

    def render(self, messages):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<a>"

    def count_tokens(self, prompts):
        return [len(p.split()) for p in prompts]

    def _hold(self, limit: float = 120.0):
        if self.progress_file:
            with open(self.progress_file, "a") as fh:
                fh.write("hold\n")
        time.sleep(limit)  # a signal's handler raising (SIGTERM, SIGINT) ends it; SIGKILL too
        raise RuntimeError(f"EchoBackend held {limit} s and no signal came")

    def generate(self, prompts, params):
        n = len(prompts)
        if self.hold_after is not None and len(self.batch_sizes) == self.hold_after:
            self._hold()
        if self.oom_once_above is not None and n > self.oom_once_above:
            self.oom_once_above = None
            raise _cuda_oom()
        if self.oom_always_above is not None and n > self.oom_always_above:
            raise _cuda_oom()
        cost = n * (max(len(p.split()) for p in prompts) + params.max_new_tokens)
        if self.oom_above_tokens is not None and cost > self.oom_above_tokens:
            raise _cuda_oom()
        self.batch_sizes.append(n)
        self.batch_costs.append(cost)
        if self.progress_file:
            with open(self.progress_file, "a") as fh:
                fh.write(f"{n}\n")
        out = []
        for p in prompts:
            text = answer_for(p)
            out.append(Completion(text=text, n_prompt_tokens=len(p.split()),
                                  n_new_tokens=len(text.split()), finish_reason="stop"))
        return out

    def close(self):
        self.closed = True


def run_echo_child(design_path: str, out: str, progress_file: str, stderr_path: str, *,
                   hold_after: int | None, shard_rows: int, resume: bool) -> None:
    """A run of :class:`EchoBackend` in a child process, for the kill / resume tests.

    The child reads the design from Parquet (as ``refusalstats generate`` does) and runs
    batches of 3 rows, writing its progress to ``progress_file`` and its stderr to
    ``stderr_path`` (the parent shows it when the child ends too early).
    """
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)  # what C code writes; Python's tracebacks and warnings go to sys.stderr,
    os.close(fd)  # which in a fork of a pytest process is the parent's capture
    sys.stderr = open(stderr_path, "a", buffering=1)  # noqa: SIM115 - open for the child's life
    import pandas as pd
    from refusalstats.inference import run_generation

    design = pd.read_parquet(design_path)
    run_generation(design, ["echo"], out,
                   backend_factory=lambda s: EchoBackend(hold_after=hold_after,
                                                         progress_file=progress_file),
                   batch_size=3, shard_rows=shard_rows, shard_seconds=1e9, progress=False,
                   detector="paper", resume=resume)

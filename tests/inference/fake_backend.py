"""Deterministic backends for runner tests (no model): answers derived from the prompt."""

from __future__ import annotations

import hashlib
import time

from refusalstats.inference.backends import Backend, Completion


def answer_for(prompt: str) -> str:
    """The answer the fake backend gives to a rendered prompt (a pure function of it)."""
    h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    return "I'm sorry, I cannot answer that." if h % 4 == 0 else f"neutral {h % 1000}"


class EchoBackend(Backend):
    """Renders chats as role-tagged text and answers with :func:`answer_for`.

    ``delay`` sleeps per batch (to be killed mid-run); ``oom_once_above`` raises
    ``torch.cuda.OutOfMemoryError`` the first time a batch has more rows than that.
    """

    engine = "echo"

    def __init__(self, model_id: str = "echo", delay: float = 0.0,
                 oom_once_above: int | None = None, oom_always_above: int | None = None,
                 oom_above_tokens: int | None = None, max_new_tokens_cost: int = 0,
                 context: int | None = None, progress_file: str | None = None):
        self.model_id = model_id
        self.delay = delay
        self.oom_once_above = oom_once_above
        self.oom_always_above = oom_always_above
        self.oom_above_tokens = oom_above_tokens
        self.max_new_tokens_cost = max_new_tokens_cost
        self.context = context
        self.progress_file = progress_file
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

    def generate(self, prompts, params):
        import torch

        n = len(prompts)
        if self.oom_once_above is not None and n > self.oom_once_above:
            self.oom_once_above = None
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        if self.oom_always_above is not None and n > self.oom_always_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        cost = n * (max(len(p.split()) for p in prompts) + params.max_new_tokens)
        if self.oom_above_tokens is not None and cost > self.oom_above_tokens:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        self.batch_sizes.append(n)
        self.batch_costs.append(cost)
        if self.delay:
            time.sleep(self.delay)
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

"""GPU inference: design -> prompts -> generate -> tidy response table.

Imported as ``refusalstats.inference``; needs the ``inference`` extra (torch,
transformers). The statistical core never imports this package.

>>> from refusalstats.inference import load_task, select_per_class, run_generation
>>> items = select_per_class(load_task("nli", "xnli_en_test.jsonl"), per_class=1000)  # doctest: +SKIP
>>> design = rs.sample_design(items, k=10, seed=0)  # doctest: +SKIP
>>> table = run_generation(design, ["Llama2-13B=meta-llama/Llama-2-13b-chat-hf"],
...                        "runs/p1")  # doctest: +SKIP

The chat-model refusal judge lives here too (:class:`JudgeDetector`, :data:`JUDGE_PROMPT`,
:func:`parse_judgment`); ``rs.detector("judge", ...)`` finds it through the
``refusalstats.detectors`` entry point. The command-line commands ``design``,
``generate`` and ``collect`` are registered from :mod:`refusalstats.inference.cli`
(entry point group ``refusalstats.commands``).
"""

from .backends import (
    DEFAULT_TEMPLATE_DATE,
    Backend,
    Completion,
    DecodingParams,
    TransformersBackend,
    greedy_generation_config,
    is_out_of_memory,
    template_supports_system,
)
from .collect import collect_runs, find_run_dirs
from .datasets import (
    NLI_LABELS,
    TASK_FIELDS,
    load_items,
    load_popquorn,
    load_task,
    load_xnli,
    read_table,
    select_per_class,
)
from .judge import JUDGE_CLASSES, JUDGE_PROMPT, JudgeDetector, parse_judgment
from .openai_compat import APIError, OpenAIBackend
from .prompts import PLACEMENTS, SYSTEM_FORMAT, build_user_prompts, chat_messages, render_chats
from .runner import (
    ModelSpec,
    RunInterrupted,
    RunLockedError,
    collect_responses,
    padded_tokens,
    plan_batches,
    run_generation,
)
from .sharding import ShardSpec, resolve_shard, shard_assignment

__all__ = [
    "DEFAULT_TEMPLATE_DATE",
    "JUDGE_CLASSES",
    "JUDGE_PROMPT",
    "NLI_LABELS",
    "PLACEMENTS",
    "SYSTEM_FORMAT",
    "TASK_FIELDS",
    "APIError",
    "Backend",
    "Completion",
    "DecodingParams",
    "JudgeDetector",
    "ModelSpec",
    "OpenAIBackend",
    "RunInterrupted",
    "RunLockedError",
    "ShardSpec",
    "TransformersBackend",
    "build_user_prompts",
    "chat_messages",
    "collect_responses",
    "collect_runs",
    "find_run_dirs",
    "greedy_generation_config",
    "is_out_of_memory",
    "load_items",
    "load_popquorn",
    "load_task",
    "load_xnli",
    "padded_tokens",
    "parse_judgment",
    "plan_batches",
    "read_table",
    "render_chats",
    "resolve_shard",
    "run_generation",
    "select_per_class",
    "shard_assignment",
    "template_supports_system",
]

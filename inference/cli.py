"""The inference part's commands: ``design``, ``generate`` and ``collect``.

Registered with the core command line through the ``refusalstats.commands`` entry points
(``add_design``, ``add_generate``, ``add_collect``, each called as ``add(subparsers, opt)``
with the core's shared options), so ``refusalstats --help`` lists them whenever this part
imports, and the core never imports it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from refusalstats.cli import CLIError, _one_line, _parse_mapping, _percent_table, _positive_int


def _map_hint(text: str, task: str) -> str:
    """A loader's ``columns={'ours': 'theirs'}`` advice as the option that does it here."""
    import re

    def option(m: re.Match) -> str:
        ours = m.group(1)
        return (f"--map {task}:our_name=file_column" if ours == "our_name"
                else f"--map {task}:{ours}=<file column>")

    return re.sub(r"columns=\{'([^']+)': '[^']*'(?:, \.\.\.)?\}", option, text)

__all__ = ["add_collect", "add_design", "add_generate"]


# --------------------------------------------------------------------------- design
def add_design(sub, opt) -> None:
    """Register ``refusalstats design`` (the prompts table from task files)."""
    p = sub.add_parser(
        "design",
        parents=opt("seed"),
        help="build the prompts table from task files (items x personas x templates)",
        description=(
            "Load task items (XNLI for nli, POPQUORN for politeness/offensiveness, any CSV/JSONL/"
            "Parquet file for other tasks), draw --per-class items per gold class as P1 did, and "
            "expand each into --k (persona, template) variations. The output holds the item "
            "texts, so 'refusalstats generate' needs nothing else."
        ),
    )
    p.add_argument("--task", action="append", required=True, metavar="TASK=FILE",
                   help="a task and its file, e.g. nli=xnli.jsonl (repeat for several tasks)")
    p.add_argument("--map", action="append", default=[], metavar="TASK:ours=theirs,...",
                   help="column mapping for a task file, e.g. 'politeness:gold_label=rating'")
    p.add_argument("--per-class", type=int, default=1000,
                   help="items drawn per gold class (default 1000, as P1; 0 keeps all)")
    p.add_argument("--k", type=int, default=10, help="variations per item (default 10)")
    p.add_argument("--setting", choices=["persona", "persona-free", "both"], default="persona")
    p.add_argument("--full-factorial", action="store_true",
                   help="every persona x template for every item instead of the Monte Carlo draw")
    p.add_argument("--unit", choices=["annotation", "text"], default="annotation",
                   help="POPQUORN item unit (default: each distinct text-rating pair)")
    p.add_argument("--language", default="en",
                   help="XNLI language kept from a multilingual file (default en)")
    p.add_argument("-o", "--out", required=True, help="output prompts table (.parquet)")
    p.set_defaults(func=_cmd_design)


def _cmd_design(args) -> int:
    from refusalstats.design import sample_design

    from .datasets import load_task, select_per_class

    maps: dict[str, dict[str, str]] = {}
    for m in args.map:
        if ":" not in m:
            raise CLIError(f"--map needs TASK:ours=theirs,..., got {m!r}")
        task, spec = m.split(":", 1)
        maps[task.strip()] = _parse_mapping(spec)
    frames = []
    for spec in args.task:
        if "=" not in spec:
            raise CLIError(f"--task needs TASK=FILE, got {spec!r}")
        task, path = (s.strip() for s in spec.split("=", 1))
        extra = {"unit": args.unit} if task in ("politeness", "offensiveness") else {}
        if task == "nli":
            extra = {"language": args.language}
        try:
            items = load_task(task, path, columns=maps.get(task), **extra)
        except (KeyError, ValueError) as exc:  # say it in command-line words (--map)
            raise CLIError(_map_hint(_one_line(exc), task)) from exc
        if args.per_class > 0:
            items = select_per_class(items, per_class=args.per_class, seed=args.seed)
            print(f"{task}: {len(items):,} items")
            print(pd.DataFrame(items.attrs["selection"]).to_string(index=False))
        else:
            print(f"{task}: {len(items):,} items (all kept)")
        frames.append(items)
    items = pd.concat(frames, ignore_index=True)
    design = sample_design(items, k=args.k, seed=args.seed, setting=args.setting,
                           full_factorial=args.full_factorial)
    # gold labels mix names (nli) and ratings (POPQUORN): store them as text
    design["gold_label"] = design["gold_label"].astype(str)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    design.to_parquet(out, index=False)
    print(f"wrote {len(design):,} prompts to {out}")
    return 0


# --------------------------------------------------------------------------- generate
def add_generate(sub, opt) -> None:
    """Register ``refusalstats generate`` (run a prompts table through models)."""
    p = sub.add_parser(
        "generate",
        parents=opt("seed"),
        help="run a prompts table through models and write the tidy response table",
        description=(
            "Generate greedy answers for every prompt with every --model (one after another), "
            "in length-sorted batches, written as resumable Parquet shards under OUT; detect "
            "refusals and write OUT/responses.parquet. Needs the 'inference' extra "
            "(pip install 'refusalstats[inference]')."
        ),
    )
    p.add_argument("prompts", help="prompts table from 'refusalstats design' (.parquet)")
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]MODEL[@REV]",
                   help="hub id or local path, optionally named, e.g. "
                        "Llama2-13B=meta-llama/Llama-2-13b-chat-hf (repeat for several)")
    p.add_argument("-o", "--out", required=True, help="run directory, e.g. runs/p1")
    p.add_argument("--resume", action="store_true", help="continue a run directory")
    p.add_argument("--placement", choices=["template", "system"], default="template",
                   help="persona in the instruction (P1) or as a system message (P2)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", default="auto",
                   help="rows per batch, or 'auto' (token budget from free GPU memory)")
    p.add_argument("--token-budget", type=int, help="tokens per batch for --batch-size auto")
    p.add_argument("--detector", default="default",
                   help="refusal detector: default, paper, xstest, hedge (default: default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bfloat16, ...")
    p.add_argument("--device-map", help="e.g. 'auto' to spread a large model over GPUs")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the hub (off unless asked for)")
    p.add_argument("--attn-implementation", help="sdpa, flash_attention_2, eager (default: "
                   "transformers' choice)")
    p.add_argument("--max-batch-size", type=_positive_int, default=256,
                   help="cap on rows per batch under --batch-size auto (default 256, measured "
                        "faster than budget-sized batches on an H200; the token budget from free "
                        "memory can lower it)")
    p.add_argument("--shard-rows", type=_positive_int, default=1024,
                   help="write a shard every N finished rows (default 1024)")
    p.add_argument("--shard-seconds", type=float, default=60.0,
                   help="... or every S seconds, whichever comes first (default 60)")
    p.add_argument("--truncate", choices=["error", "middle"], default="error",
                   help="a prompt longer than the model's context: error (default), or cut "
                        "its middle out (column 'truncated')")
    p.add_argument("--template-date", default=None, metavar="YYYY-MM-DD",
                   help="the date chat templates see as today (default 2024-07-26; recorded)")
    api = p.add_argument_group(
        "OpenAI-compatible server (--backend openai: the OpenAI API, vLLM, SGLang, TGI, "
        "llama.cpp)")
    api.add_argument("--backend", choices=["transformers", "openai"], default="transformers",
                     help="transformers (load the model here, default) or openai (send chat "
                          "requests to --base-url; --model names the served model)")
    api.add_argument("--base-url", help="server URL up to /v1 (default $OPENAI_BASE_URL or "
                                        "https://api.openai.com/v1), e.g. http://127.0.0.1:8000/v1")
    api.add_argument("--api-key-env", metavar="NAME",
                     help="environment variable holding the API key (default OPENAI_API_KEY; "
                          "the key is never written to disk)")
    api.add_argument("--concurrency", type=_positive_int, default=8,
                     help="requests in flight at most (default 8)")
    api.add_argument("--request-timeout", type=float, default=120.0,
                     help="seconds one request may take in all (connect, headers, body: a "
                          "deadline, not a limit per read) before it is retried (default 120)")
    api.add_argument("--on-error", choices=["record", "stop"], default="record",
                     help="a prompt the server rejects (a 4xx for that prompt, e.g. too long): "
                          "record it as a row with the error text (refusal_source 'error', "
                          "left out of analyses, which say how many; default) or stop the run "
                          "(the other rows are written; --resume continues)")
    api.add_argument("--max-retries", type=int, default=8,
                     help="retries per request on 429/5xx/timeouts/dropped connections, with "
                          "exponential backoff honouring Retry-After (default 8)")
    api.add_argument("--extra-body", metavar="JSON",
                     help="fields added to every request, e.g. "
                          "'{\"chat_template_kwargs\": {\"date_string\": \"26 Jul 2024\"}}' "
                          "(recorded)")
    p.add_argument("--shard", metavar="I/N",
                   help="run shard I of N (0-based; whole items) into OUT/shard-I-of-N; default "
                        "from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, else RANK/WORLD_SIZE; "
                        "0/1 runs everything; merge with 'refusalstats collect OUT'")
    p.set_defaults(func=_cmd_generate)


def add_collect(sub, opt) -> None:
    """Register ``refusalstats collect`` (merge run directories into one table)."""
    p = sub.add_parser(
        "collect",
        parents=opt(),
        help="merge run directories (shards of 'generate --shard', or several runs) into one table",
        description=(
            "Merge the answers of run directories into one tidy response table, detect "
            "refusals and write it. Each RUN_DIR is a run directory or a folder of "
            "shard-I-of-N run directories. Every prompt of the recorded prompts table must "
            "be answered exactly once per model: a missing or duplicated prompt is an error "
            "unless --allow-missing."
        ),
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--out", required=True, help="output table (.parquet, .csv, .jsonl)")
    p.add_argument("--detector", default="default",
                   help="refusal detector: default, paper, xstest, hedge (default: default)")
    p.add_argument("--model", action="append", metavar="NAME",
                   help="collect only this model (repeat for several; default: all)")
    p.add_argument("--allow-missing", action="store_true",
                   help="write the table even when prompts have no answer (the count is printed "
                        "and stored in the metadata)")
    p.set_defaults(func=_cmd_collect)


def _cmd_collect(args) -> int:
    import warnings

    from refusalstats.table import write_responses

    from .collect import collect_runs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the missing counts are printed below
        table = collect_runs(args.run_dirs, detector=args.detector, models=args.model,
                             allow_missing=args.allow_missing)
    meta = table.attrs["metadata"]
    path = write_responses(table, args.out, metadata=meta)
    for name, n in meta["n_missing"].items():
        print(f"warning: model {name}: {n:,} prompt(s) have no answer (--allow-missing)",
              file=sys.stderr)
    print(f"collected {len(table):,} rows ({table['model'].nunique()} model(s), "
          f"{len(meta['runs'])} run director{'y' if len(meta['runs']) == 1 else 'ies'}) "
          f"to {path}")
    return 0


def _cmd_generate(args) -> int:
    from .backends import DecodingParams
    from .runner import ModelSpec, run_generation
    from .sharding import resolve_shard

    shard = resolve_shard(args.shard)
    if shard is not None and shard.source == "RANK/WORLD_SIZE" and args.device == "auto" \
            and os.environ.get("LOCAL_RANK", "").isdigit():
        import torch

        if torch.cuda.is_available():
            args.device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"

    if not Path(args.prompts).exists():
        raise CLIError(f"the prompts table {args.prompts!r} does not exist; write it first with "
                       f"'refusalstats design --task nli=xnli.jsonl -o {args.prompts}' (see "
                       "'refusalstats design --help')")
    prompts = pd.read_parquet(args.prompts)
    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    from .runner import RunInterrupted

    engine: dict = {}
    if args.backend == "openai":
        import json

        try:
            extra_body = json.loads(args.extra_body) if args.extra_body else None
        except ValueError as exc:
            raise ValueError(f"--extra-body is not JSON: {exc}") from None
        if extra_body is not None and not isinstance(extra_body, dict):
            raise ValueError("--extra-body must be a JSON object")
        engine = {"backend": "openai", "base_url": args.base_url, "api_key_env": args.api_key_env,
                  "concurrency": args.concurrency, "request_timeout": args.request_timeout,
                  "max_retries": args.max_retries, "extra_body": extra_body}
    specs = [ModelSpec.parse(m, dtype=args.dtype, device=args.device,
                             trust_remote_code=args.trust_remote_code,
                             device_map=args.device_map,
                             attn_implementation=args.attn_implementation, **engine)
             for m in args.model]
    extra = {} if args.template_date is None else {"template_date": args.template_date}
    try:
        table = run_generation(
            prompts, specs, args.out, placement=args.placement,
            params=DecodingParams(max_new_tokens=args.max_new_tokens), batch_size=batch,
            token_budget=args.token_budget, max_batch_size=args.max_batch_size,
            resume=args.resume, detector=args.detector, seed=args.seed,
            shard_rows=args.shard_rows, shard_seconds=args.shard_seconds,
            truncate=args.truncate, shard=shard, on_error=args.on_error, **extra,
        )
    except RunInterrupted as exc:
        print(f"error: {exc}; the finished rows are written, continue with --resume",
              file=sys.stderr)
        return 128 + exc.signum
    from refusalstats.table import is_error_row

    errors = is_error_row(table)
    answered = table[~errors]
    rates = answered.groupby(["model", "task"], observed=True)["refusal"].agg(["size", "mean"])
    rates = rates.rename(columns={"size": "n", "mean": "refusal rate"})
    print(_percent_table(rates).to_string())
    n_provider = int((answered.get("refusal_source") == "provider").sum()) \
        if "refusal_source" in answered.columns else 0
    n_empty = int(answered["empty_response"].sum()) if "empty_response" in answered.columns else 0
    print(f"{n_provider:,} provider refusal(s) (counted as refusals, refusal_source 'provider'); "
          f"{int(errors.sum()):,} prompt(s) without an answer (error rows, left out of the rates "
          f"above and of analyses); {n_empty:,} empty answer(s) (column empty_response)")
    if shard is None:
        print(f"wrote {len(table):,} rows to {Path(args.out) / 'responses.parquet'}")
    else:
        from .sharding import shard_dir_name

        print(f"wrote {len(table):,} rows of shard {shard} to "
              f"{Path(args.out) / shard_dir_name(shard) / 'responses.parquet'}; when every shard "
              f"is done: refusalstats collect {args.out} -o table.parquet")
    return 0

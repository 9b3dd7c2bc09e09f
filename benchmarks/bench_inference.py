"""Inference pipeline overhead: the runner vs a bare ``model.generate`` loop.

Both generate greedy answers for the same prompts in the same batches (the runner's
length-sorted plan under one token budget) from the same loaded model. The runner's time
includes everything it does on top: building the user turns, chat templating, token
counting, Parquet shards, refusal detection, validation and writing the tidy table. The
bare loop only tokenizes each batch (left padding), calls ``model.generate`` and decodes.
Target: runner overhead under 10%.

It also reports the padding saved by length-sorting: prompt tokens processed (rows x
longest prompt per batch) for sorted batches vs arrival order, and the bare loop's time in
arrival order.

Runs unchanged on a GPU::

    python benchmarks/bench_inference.py                       # tiny random Llama, CPU
    python benchmarks/bench_inference.py --device cuda --model Qwen/Qwen2.5-0.5B-Instruct

Without ``--model`` a tiny random Llama and a locally trained tokenizer are built in a
temporary directory (no network).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _import_from_checkout() -> None:
    """Make ``refusalstats.inference`` importable from a source checkout that is not
    installed (a bare GPU machine with torch and transformers but no ``pip install -e``)."""
    try:
        import refusalstats.inference
    except ImportError:
        sys.path.insert(0, str(ROOT / "src"))
        import refusalstats

        if str(ROOT) not in refusalstats.__path__:
            refusalstats.__path__.append(str(ROOT))  # inference/ lives at the root


def _tiny_model_module():
    spec = importlib.util.spec_from_file_location(
        "tiny_model", ROOT / "tests" / "inference" / "tiny_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _items(n_items: int, seed: int) -> pd.DataFrame:
    tiny = _tiny_model_module()
    rng = np.random.default_rng(seed)
    sents = tiny.corpus_sentences(4 * n_items, seed=seed)
    half = n_items // 2
    # vary lengths like real data: join 1-4 sentences per text
    def text(i):
        k = int(rng.integers(1, 5))
        return " ".join(sents[(i * 4 + j) % len(sents)] for j in range(k))
    nli = pd.DataFrame({"item_id": [f"n{i}" for i in range(half)], "task": "nli",
                        "premise": [text(i) for i in range(half)],
                        "hypothesis": [sents[(7 * i + 1) % len(sents)] for i in range(half)],
                        "gold_label": "neutral"})
    pol = pd.DataFrame({"item_id": [f"t{i}" for i in range(n_items - half)],
                        "task": "politeness",
                        "text": [text(i + half) for i in range(n_items - half)],
                        "gold_label": "3"})
    return pd.concat([nli, pol], ignore_index=True)


def bare_loop(model, tokenizer, texts, batches, max_new_tokens, device, eos_ids):
    """The reference: tokenize, generate, decode, batch after batch."""
    import torch
    from transformers import GenerationConfig

    # plain greedy, as the runner (a model's own generation_config may add e.g. a
    # repetition penalty; both paths leave it out)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False,
                              eos_token_id=list(eos_ids), pad_token_id=tokenizer.pad_token_id)
    out = [None] * len(texts)
    new_tokens = 0
    for b in batches:
        enc = tokenizer([texts[i] for i in b], add_special_tokens=False, padding=True,
                        return_tensors="pt").to(device)
        with torch.inference_mode():
            gen = model.generate(**enc, generation_config=config)
        new = gen[:, enc["input_ids"].shape[1]:]
        new_tokens += int(new.numel())
        for i, t in zip(b, tokenizer.batch_decode(new, skip_special_tokens=True)):
            out[i] = t
    return out, new_tokens


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="hub id or local path (default: build the tiny model)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--items", type=int, default=64, help="task items (x k=4 prompts each)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--token-budget", type=int, help="batch token budget (default: backend's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared 2-core box more threads "
                         "only contend)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    _import_from_checkout()

    import torch
    from refusalstats.inference import (
        DecodingParams,
        TransformersBackend,
        build_user_prompts,
        padded_tokens,
        plan_batches,
        render_chats,
        run_generation,
    )

    import refusalstats as rs

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_inference_"))
    try:
        if args.model:
            model_path, model_label = args.model, args.model
        else:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            model_path = str(_tiny_model_module().build_tiny_model(tmp / "tiny"))
            model_label = "tiny random Llama (2 layers, hidden 32)"
        backend = TransformersBackend(model_path, device=args.device)
        model, tok = backend.model, backend.tokenizer
        params = DecodingParams(max_new_tokens=args.max_new_tokens)
        dtype_name = backend.info()["dtype"]
        eos = backend.eos_token_ids
        budget = args.token_budget or backend.token_budget(params)

        design = rs.sample_design(_items(args.items, args.seed), k=4, seed=args.seed)
        users = build_user_prompts(design, "template")
        texts, _, _ = render_chats(users["user_text"].tolist(), users["system_text"].tolist(),
                                   backend.render, backend.supports_system_role())
        lengths = np.asarray(backend.count_tokens(texts))
        batches = plan_batches(lengths, params.max_new_tokens, token_budget=budget)
        sizes = [len(b) for b in batches]
        # arrival order with the same batch sizes
        arrival, start = [], 0
        for s in sizes:
            arrival.append(np.arange(start, start + s))
            start += s
        n = len(texts)

        class Preloaded:
            """Hands the runner the already-loaded backend (loading is not timed)."""

            def __call__(self, spec):
                backend.model = model
                return backend

        bare_t, run_t, arr_t, loop_t = [], [], [], []
        bare_out = None
        table = None
        # warm-up (allocator, kernels) on one batch
        bare_loop(model, tok, texts, batches[:1], params.max_new_tokens, backend.device, eos)
        for r in range(args.repeats):
            t0 = time.perf_counter()
            bare_out, new_tok = bare_loop(model, tok, texts, batches, params.max_new_tokens,
                                          backend.device, eos)
            bare_t.append(time.perf_counter() - t0)
            out_dir = tmp / f"run{r}"
            t0 = time.perf_counter()
            table = run_generation(design, [f"bench={model_path}"], out_dir, params=params,
                                   token_budget=budget, backend_factory=Preloaded(),
                                   progress=False, detector="default", seed=args.seed)
            run_t.append(time.perf_counter() - t0)
            loop_t.append(table.attrs["metadata"]["models"]["bench"]["sessions"][-1]["seconds"])
            t0 = time.perf_counter()
            bare_loop(model, tok, texts, arrival, params.max_new_tokens, backend.device, eos)
            arr_t.append(time.perf_counter() - t0)
            shutil.rmtree(out_dir, ignore_errors=True)

        # same answers from both paths (greedy, same batches)
        runner_answers = table.sort_values("row_id")["response"].tolist()
        same = sum(a == b for a, b in zip(runner_answers, bare_out))

        tb, tr, ta, tl = (statistics.median(x) for x in (bare_t, run_t, arr_t, loop_t))
        pad_sorted = padded_tokens(lengths, batches)
        pad_arrival = padded_tokens(lengths, arrival)
        real = int(lengths.sum())
        dev = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
               else f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s)")
        print(f"\n### Inference pipeline ({time.strftime('%Y-%m-%d')})\n")
        print(f"Model: {model_label}; device: {dev}; dtype {dtype_name}; "
              f"{n} prompts, {len(batches)} batches (token budget {budget}, median batch "
              f"{int(np.median(sizes))}), max_new_tokens {params.max_new_tokens}, "
              f"median of {args.repeats} runs; Python {platform.python_version()}, "
              f"torch {torch.__version__}.\n")
        print("| measure | bare model.generate loop | refusalstats runner | ratio |")
        print("|---|---:|---:|---:|")
        print(f"| wall time (s) | {tb:.2f} | {tr:.2f} | {tr / tb:.3f} |")
        print(f"| rows/s | {n / tb:.1f} | {n / tr:.1f} | {tb / tr:.3f} |")
        print(f"| new tokens/s | {new_tok / tb:.0f} | {new_tok / tr:.0f} | {tb / tr:.3f} |")
        print(f"| of which the batch loop (s) | {tb:.2f} | {tl:.2f} | {tl / tb:.3f} |")
        print(f"\nRunner overhead: {100 * (tr / tb - 1):+.1f}% in all (target < 10%): "
              f"{100 * (tl / tb - 1):+.1f}% in the batch loop, plus {tr - tl:.2f} s once per run "
              "(prompt building, chat templating, token counting, detection, validation and "
              f"Parquet output). Identical answers: {same}/{n}.\n")
        print("| batching (same batch sizes) | length-sorted | arrival order | saved |")
        print("|---|---:|---:|---:|")
        print(f"| prompt tokens processed (real: {real}) | {pad_sorted} | {pad_arrival} | "
              f"{100 * (1 - pad_sorted / pad_arrival):.1f}% |")
        print(f"| padding tokens | {pad_sorted - real} | {pad_arrival - real} | "
              f"{100 * (1 - (pad_sorted - real) / max(pad_arrival - real, 1)):.1f}% |")
        print(f"| bare loop wall time (s) | {tb:.2f} | {ta:.2f} | "
              f"{100 * (1 - tb / ta):.1f}% |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

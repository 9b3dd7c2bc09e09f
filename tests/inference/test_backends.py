"""The transformers backend on the tiny model: greedy decoding, left padding, stopping."""

from __future__ import annotations

import pytest
import torch
from refusalstats.inference import DecodingParams, is_out_of_memory

PROMPTS = [
    "Hi.",
    "Would a woman classify the following text as polite or impolite? Text: the cat ran.",
    ("Given a premise and a hypothesis, would an atheist person classify the relationship as "
     "entailment, contradiction, or neutral? Premise: the dog ran in the park today. "
     "Hypothesis: the weather is red."),
    "Label this text as offensive or not offensive.",
]


def _rendered(backend):
    return [backend.render([{"role": "user", "content": p}]) for p in PROMPTS]


def _manual_greedy(model, ids: list[int], n: int, stop: set[int]) -> list[int]:
    """Reference: full forward pass per step (no cache, no padding), argmax."""
    out = []
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq])).logits[0, -1]
            t = int(torch.argmax(logits))
            out.append(t)
            if t in stop:
                break
            seq.append(t)
    return out


def test_greedy_matches_a_manual_argmax_loop(tiny_backend):
    tok, model = tiny_backend.tokenizer, tiny_backend.model
    prompts = _rendered(tiny_backend)[:2]
    params = DecodingParams(max_new_tokens=6)
    comps = tiny_backend.generate(prompts, params)
    for p, c in zip(prompts, comps):
        ids = tok(p, add_special_tokens=False)["input_ids"]
        ref = _manual_greedy(model, ids, 6, set(tiny_backend.eos_token_ids))
        body = [t for t in ref if t not in tiny_backend.eos_token_ids]
        assert c.text == tok.decode(body, skip_special_tokens=True)
        assert c.n_new_tokens == len(ref)
        assert c.n_prompt_tokens == len(ids)


def test_left_padding_gives_the_unbatched_outputs(tiny_backend):
    prompts = _rendered(tiny_backend)
    lengths = tiny_backend.count_tokens(prompts)
    assert len(set(lengths)) == len(lengths)  # really different lengths: padding happens
    params = DecodingParams(max_new_tokens=8)
    batched = tiny_backend.generate(prompts, params)
    single = [tiny_backend.generate([p], params)[0] for p in prompts]
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.n_new_tokens for c in batched] == [c.n_new_tokens for c in single]
    assert [c.n_prompt_tokens for c in batched] == lengths
    assert tiny_backend.tokenizer.padding_side == "left"


def test_generation_stops_at_a_stop_token(tiny_backend):
    tok = tiny_backend.tokenizer
    prompt = _rendered(tiny_backend)[1]
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    free = _manual_greedy(tiny_backend.model, ids, 6, set())
    stop = free[2]
    k = free.index(stop)  # first occurrence ends generation
    c = tiny_backend.generate([prompt], DecodingParams(max_new_tokens=6, stop_token_ids=(stop,)))[0]
    assert c.finish_reason == "stop"
    assert c.n_new_tokens == k + 1
    assert c.text == tok.decode(free[:k], skip_special_tokens=True)
    c2 = tiny_backend.generate([prompt], DecodingParams(max_new_tokens=3))[0]
    if not set(free[:3]) & set(tiny_backend.eos_token_ids):
        assert (c2.finish_reason, c2.n_new_tokens) == ("length", 3)


def test_info_records_model_and_decoding_environment(tiny_backend, tiny_model_dir):
    info = tiny_backend.info()
    assert info["model_id"] == str(tiny_model_dir)
    assert info["commit"].startswith("local-sha256:")
    assert info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["eos_token_ids"] == [tiny_backend.tokenizer.eos_token_id]
    assert info["versions"]["transformers"] == __import__("transformers").__version__
    assert tiny_backend.token_budget(DecodingParams()) == 4096


def test_decoding_params_validation():
    with pytest.raises(ValueError, match="only greedy decoding"):
        DecodingParams(temperature=0.7)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        DecodingParams(max_new_tokens=0)
    assert DecodingParams(stop_token_ids=[3]).to_dict()["stop_token_ids"] == [3]


def test_out_of_memory_recognition():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_cuda_request_without_cuda_is_a_clear_error(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from refusalstats.inference import TransformersBackend

    with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
        TransformersBackend(str(tiny_model_dir), device="cuda")

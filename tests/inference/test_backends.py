"""The transformers backend on the tiny model: greedy decoding, left padding, stopping."""

from __future__ import annotations

# torch is imported inside the tests: at module level both xdist workers paid ~1.5 s for it
# while collecting
import pytest
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
    import torch

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
    import torch

    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_cuda_request_without_cuda_is_a_clear_error(tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from refusalstats.inference import TransformersBackend

    with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
        TransformersBackend(str(tiny_model_dir), device="cuda")


# ---------------------------------------------------------------------------- issue 12
def _many_prompts(n=36):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_model import corpus_sentences

    return corpus_sentences(n, seed=5)


def test_greedy_ignores_a_sampling_generation_config(tiny_backend, sampling_model_dir):
    """A checkpoint asking for sampling + repetition penalty still decodes plain greedy.

    Regression (issue 12, #1): unset GenerationConfig fields were filled from the
    model's generation_config.json, so answers were sampled / penalised.
    """
    import torch
    from refusalstats.inference import TransformersBackend

    shipped = TransformersBackend(str(sampling_model_dir), device="cpu")
    a, b = shipped.model.state_dict(), tiny_backend.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same weights
    texts = [tiny_backend.render([{"role": "user", "content": t}]) for t in _many_prompts()]
    params = DecodingParams(max_new_tokens=12)
    clean = tiny_backend.generate(texts, params)
    for _ in range(3):  # sampling would change the answers between identical calls
        got = shipped.generate(texts, params)
        assert [c.text for c in got] == [c.text for c in clean]
        assert [c.n_new_tokens for c in got] == [c.n_new_tokens for c in clean]
    # and both equal a hand-written argmax loop
    tok = tiny_backend.tokenizer
    eos = set(tiny_backend.eos_token_ids)
    for p, c in list(zip(texts, clean))[:6]:
        ref = _manual_greedy(shipped.model, tok(p, add_special_tokens=False)["input_ids"], 12, eos)
        assert c.text == tok.decode([t for t in ref if t not in eos], skip_special_tokens=True)
    # the shipped settings are kept in the metadata, not used
    ignored = shipped.info()["model_generation_config_ignored"]
    assert ignored["do_sample"] is True and ignored["repetition_penalty"] == 1.3


def test_greedy_generation_config_is_complete():
    from refusalstats.inference.backends import greedy_generation_config

    c = greedy_generation_config(7, [3], 0, 1)
    assert (c.do_sample, c.num_beams, c.repetition_penalty, c.no_repeat_ngram_size) == \
        (False, 1, 1.0, 0)
    assert (c.temperature, c.top_p, c.max_new_tokens, c.eos_token_id) == (1.0, 1.0, 7, [3])
    assert c.suppress_tokens is None and c.bad_words_ids is None


def test_from_pretrained_dtype_keyword_follows_the_transformers_version(tiny_model_dir,
                                                                        monkeypatch):
    """Regression (issue 12, #2): `dtype=` is a TypeError before transformers 4.56."""
    import torch
    import transformers
    from refusalstats.inference import TransformersBackend

    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*a, **k):
        seen.update(k)
        k.pop("torch_dtype", None)
        k.pop("dtype", None)
        return real(*a, **k)  # float32, the default

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    monkeypatch.setattr(transformers, "__version__", "4.46.3")
    TransformersBackend(str(tiny_model_dir), device="cpu")
    assert seen.get("torch_dtype") is torch.float32 and "dtype" not in seen


DATE_TEMPLATE = (
    "{{ bos_token }}{% if date_string is not defined %}{% set date_string = 'none' %}{% endif %}"
    "<|im_start|>system\nToday: {{ strftime_now('%d %b %Y') }} / {{ date_string }}<|im_end|>\n"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_chat_templates_see_a_fixed_date(tiny_model_dir, tmp_path):
    """Regression (issue 12, #5): Llama 3.x templates stamp today's date into prompts."""
    from refusalstats.inference import TransformersBackend
    from tiny_model import build_tokenizer

    build_tokenizer(DATE_TEMPLATE).save_pretrained(tmp_path)
    be = TransformersBackend(str(tiny_model_dir), tokenizer=str(tmp_path), device="cpu")
    msgs = [{"role": "user", "content": "Hi."}]
    assert "Today: 26 Jul 2024 / 26 Jul 2024" in be.render(msgs)
    assert all("Today: 26 Jul 2024 / 26 Jul 2024" in r for r in be.render_many([msgs, msgs]))
    be.template_date = "2023-01-02"
    assert "Today: 02 Jan 2023 / 02 Jan 2023" in be.render(msgs)
    # the clock is restored after rendering
    import datetime

    from transformers.utils import chat_template_utils
    assert getattr(chat_template_utils, "datetime", datetime.datetime) is datetime.datetime
    with pytest.raises(ValueError, match="ISO date"):
        TransformersBackend(str(tiny_model_dir), device="cpu", template_date="July 26")


def test_max_positions_and_middle_truncation(tiny_backend):
    assert tiny_backend.max_positions() == 1024
    p = tiny_backend.render([{"role": "user", "content": " ".join(_many_prompts(30))}])
    n = tiny_backend.count_tokens([p])[0]
    assert n > 60
    (cut,) = tiny_backend.truncate_prompts([p], 40)
    ids = tiny_backend._ids[cut]
    assert len(ids) == 40
    full = tiny_backend.tokenizer(p, add_special_tokens=False)["input_ids"]
    assert ids[:20].tolist() == full[:20] and ids[20:].tolist() == full[-20:]
    c = tiny_backend.generate([cut], DecodingParams(max_new_tokens=2))[0]
    assert c.n_prompt_tokens == 40

"""Build a tiny random Llama chat model and a locally trained tokenizer, offline.

Used by the inference tests (session fixture in ``conftest.py``) and by
``benchmarks/bench_inference.py``. Nothing is downloaded: the tokenizer is a byte-level
BPE trained here on generated sentences, the model a randomly initialised
``LlamaForCausalLM`` with a few thousand parameters per layer.
"""

from __future__ import annotations

import functools
import itertools
import random
from pathlib import Path

#: A ChatML-style template that accepts a system message.
CHAT_TEMPLATE_SYSTEM = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: A Gemma-style template that rejects a system message, as Gemma's and Mistral v0.1's do.
CHAT_TEMPLATE_NO_SYSTEM = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: A template that silently drops system messages (the check must notice the text is gone).
CHAT_TEMPLATE_DROPS_SYSTEM = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = ["the", "a", "an", "man", "woman", "person", "black", "white", "asian", "jewish", "christian", "atheist", "muslim", "religious", "transgender", "non-binary", "physically-disabled", "able-bodied", "would", "classify", "label", "relationship", "between", "following", "premise", "hypothesis", "as", "entailment", "contradiction", "neutral", "given", "text", "it", "polite", "impolite", "offensive", "not", "only", "answer", "with", "you", "have", "to", "pick", "one", "of", "two", "three", "options", "sorry", "i", "cannot", "can't", "am", "not", "able", "this", "is", "appropriate", "yes", "no", "what", "do", "think", "about", "weather", "today", "cat", "dog", "ran", "park", "house", "red", "blue", "green", "assistant", "user", "system", "are", "helpful"]


def _corpus(n: int = 600, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(4, 16)
        out.append(" ".join(rng.choice(_WORDS) for _ in range(k)).capitalize() + rng.choice(".?!"))
    return out


@functools.cache
def _trained_bpe(vocab_size: int) -> str:
    """The byte-level BPE trained on the generated corpus, as JSON (trained once a process:
    the fixtures build the same tokenizer with several chat templates)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok.to_str()


def build_tokenizer(chat_template: str = CHAT_TEMPLATE_SYSTEM, vocab_size: int = 400):
    """Train a byte-level BPE tokenizer on a generated corpus; return a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_trained_bpe(vocab_size))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>",
        unk_token="<unk>", additional_special_tokens=["<|im_start|>", "</s>"],
    )
    fast.chat_template = chat_template
    return fast


def build_tiny_model(path: str | Path, chat_template: str = CHAT_TEMPLATE_SYSTEM,
                     seed: int = 0, hidden_size: int = 32, num_layers: int = 2,
                     generation: dict | None = None, max_positions: int = 1024) -> Path:
    """Save a tiny random ``LlamaForCausalLM`` and its tokenizer to ``path``; return ``path``.

    ``generation`` adds settings to the saved ``generation_config.json`` (e.g. a
    Qwen-style ``do_sample=True, repetition_penalty=1.05``).
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    # The tiny model is far faster on one thread, and CI machines are shared: more threads
    # only contend (measured 13x slower per matmul with 2 threads on a loaded 2-core box).
    # (Process-wide: the backends the tests build on this model in this process use it too.)
    torch.set_num_threads(1)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(chat_template)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Random init gives near-uniform logits; a larger output scale makes greedy choices
    # well separated, so batched vs unbatched comparisons are not decided by rounding.
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **(generation or {"do_sample": False}),
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def corpus_sentences(n: int, seed: int = 1) -> list[str]:
    """Generated sentences of varied length (texts for test items)."""
    return list(itertools.islice(_corpus(n, seed), n))

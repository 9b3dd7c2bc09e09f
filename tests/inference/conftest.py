"""Fixtures for the inference tests: a tiny random Llama chat model built offline."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Without torch and transformers (the [inference] extra) the folder is skipped. They are
# looked up, not imported: importing torch here cost each xdist worker ~1.5 s while
# collecting, though most of these tests never touch it (tiny_model.build_tiny_model
# imports it, and sets one thread, for the tests that do).
for _name in ("torch", "transformers"):
    if importlib.util.find_spec(_name) is None:
        pytest.skip(f"the inference tests need {_name} (pip install -e '.[inference]')",
                    allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent))

from tiny_model import (
    CHAT_TEMPLATE_DROPS_SYSTEM,
    CHAT_TEMPLATE_NO_SYSTEM,
    build_tiny_model,
    build_tokenizer,
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny LlamaForCausalLM + trained tokenizer (chat template with a system role)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def no_system_tokenizer_dir(tmp_path_factory) -> Path:
    """The same tokenizer with a chat template that raises on a system message."""
    path = tmp_path_factory.mktemp("tok-no-system")
    build_tokenizer(CHAT_TEMPLATE_NO_SYSTEM).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def drops_system_tokenizer_dir(tmp_path_factory) -> Path:
    """The same tokenizer with a chat template that silently drops system messages."""
    path = tmp_path_factory.mktemp("tok-drops-system")
    build_tokenizer(CHAT_TEMPLATE_DROPS_SYSTEM).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir):
    """The real TransformersBackend on the tiny model (CPU, float32)."""
    from refusalstats.inference import TransformersBackend

    return TransformersBackend(str(tiny_model_dir), device="cpu")


#: A checkpoint's generation_config.json that asks for sampling and penalties (Qwen2.5
#: ships repetition_penalty 1.05 with temperature/top_p/top_k).
SAMPLING_GENERATION = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
                       "repetition_penalty": 1.3, "no_repeat_ngram_size": 2}


@pytest.fixture(scope="session")
def sampling_model_dir(tmp_path_factory) -> Path:
    """The tiny model with the same weights, saved with a sampling generation config."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-sampling"),
                            generation=SAMPLING_GENERATION)


@pytest.fixture
def children():
    """Child processes a test started (``_Child`` of test_runner): killed at its end,
    whatever its outcome, so a held child never outlives a failing test."""
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()

"""The generation seam: ``generate(batch of chat prompts, params) -> texts + token counts``.

A backend renders chat messages with the model's own chat template, counts tokens, and
generates greedily. The runner (:mod:`refusalstats.inference.runner`) needs nothing else,
so another engine (vLLM, an HTTP server) is one more subclass of :class:`Backend`.

:class:`TransformersBackend` loads ``AutoModelForCausalLM`` / ``AutoTokenizer`` from a hub
id or a local directory, pads on the left, decodes greedily under
``torch.inference_mode`` in bf16 on CUDA (float32 on CPU) and stops at the model's EOS
token(s).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TEMPLATE_DATE",
    "Backend",
    "Completion",
    "DecodingParams",
    "TransformersBackend",
    "greedy_generation_config",
    "is_out_of_memory",
    "package_versions",
]

#: The date chat templates see (Llama 3.x stamps "Today Date: ..." into every prompt with
#: ``strftime_now``); fixed so a prompt renders the same on any day. Llama 3.1's own
#: fallback date.
DEFAULT_TEMPLATE_DATE = "2024-07-26"

_SYSTEM_PROBE = "SYSTEM-ROLE-PROBE 7f3a"


@dataclass(frozen=True)
class DecodingParams:
    """Decoding settings shared by all backends.

    Parameters
    ----------
    max_new_tokens : int
        Tokens generated at most per prompt. The default, 64, holds a label plus a
        refusal sentence ("I'm sorry, but I cannot make assumptions about ...");
        refusal detection reads the start of the answer.
    temperature : float
        Only 0 (greedy decoding, as P1) is supported.
    stop_token_ids : tuple of int
        Extra token ids that end generation, on top of the model's EOS token(s).

    Examples
    --------
    >>> DecodingParams(max_new_tokens=32).to_dict()["do_sample"]
    False
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature != 0:
            raise ValueError(
                f"temperature={self.temperature}: only greedy decoding (temperature=0) is "
                "supported, as in P1; sampling would need several draws per prompt"
            )
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    def to_dict(self) -> dict:
        """The settings as stored in the run metadata."""
        d = asdict(self)
        d["stop_token_ids"] = list(self.stop_token_ids)
        d["do_sample"] = False
        return d


@dataclass(frozen=True)
class Completion:
    """One generated answer.

    ``finish_reason`` is ``"stop"`` when an EOS/stop token ended it (the token is counted
    in ``n_new_tokens`` but not part of ``text``) and ``"length"`` when it hit
    ``max_new_tokens``. ``extra`` holds engine-specific per-row values written as
    columns of their own (an API's ``system_fingerprint``, the attempts a request took).

    ``provider_refusal`` is set (to the reason, e.g. ``"finish_reason content_filter"``)
    when the engine itself declined: the row gets ``refusal = 1`` with ``refusal_source =
    "provider"`` whatever the detector says. ``error`` is set when the prompt got no answer
    (an API's 4xx for this prompt): the row is recorded with ``refusal_source = "error"``
    and no refusal value, and analyses leave it out (and say so).
    """

    text: str
    n_prompt_tokens: int
    n_new_tokens: int
    finish_reason: str
    extra: dict = field(default_factory=dict, compare=False)
    provider_refusal: str | None = None
    error: str | None = None


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` is an accelerator out-of-memory error (CUDA, or a message saying so).

    Examples
    --------
    >>> is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    True
    >>> is_out_of_memory(ValueError("bad"))
    False
    """
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is an inference dependency
        pass
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the generated text."""
    import importlib.metadata as md

    out = {}
    for name in ("refusalstats", "torch", "transformers", "tokenizers", "accelerate", "vllm"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


class Backend(ABC):
    """A text-generation engine behind the runner.

    Subclasses implement :meth:`render`, :meth:`count_tokens` and :meth:`generate`;
    :meth:`info`, :meth:`token_budget` and :meth:`close` have defaults.
    """

    #: Name recorded in the metadata.
    engine: str = "backend"
    #: The model identifier (hub id or path).
    model_id: str = ""
    #: The date chat templates see (ISO ``YYYY-MM-DD``), set by the runner.
    template_date: str = DEFAULT_TEMPLATE_DATE

    @abstractmethod
    def render(self, messages: Sequence[dict]) -> str:
        """Apply the chat template with a generation prompt; return the prompt string."""

    def render_many(self, conversations: Sequence[Sequence[dict]]) -> list[str]:
        """Render many conversations (engines with a faster batched path override this)."""
        return [self.render(c) for c in conversations]

    @abstractmethod
    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        """Token counts of rendered prompts, as :meth:`generate` will see them."""

    @abstractmethod
    def generate(self, prompts: Sequence[str], params: DecodingParams) -> list[Completion]:
        """Generate one completion per rendered prompt, in order."""

    def supports_system_role(self) -> bool:
        """Whether the chat template takes a system message and keeps its text.

        Tried, not guessed from the model name: a template that raises on a system
        message, or renders it without its text, has no system role.
        """
        cached = getattr(self, "_system_role", None)
        if cached is not None:
            return cached
        ok = template_supports_system(self.render)
        self._system_role = ok
        return ok

    def token_budget(self, params: DecodingParams) -> int:
        """Tokens (prompt + new, summed over a batch) one batch may hold."""
        return 8192

    def max_positions(self) -> int | None:
        """The longest sequence (prompt + new tokens) the model takes; None if unknown."""
        return None

    def max_batch_rows(self) -> int | None:
        """A cap on rows per batch that suits the engine (None: the runner's cap alone)."""
        return None

    def truncate_prompts(self, prompts: Sequence[str], max_tokens: int) -> list[str]:
        """Shorten rendered prompts to at most ``max_tokens`` tokens (engines that can)."""
        raise ValueError(f"{type(self).__name__} has no local tokenizer, so it cannot truncate "
                         "prompts; drop --truncate (the server reports prompts that are too "
                         "long) or shorten them before generating")

    def identity(self) -> dict[str, Any]:
        """What makes the answers this model's: compared when a run is resumed."""
        return {"engine": self.engine, "model_id": self.model_id}

    def info(self) -> dict[str, Any]:
        """Metadata describing the model and engine, stored with the results."""
        return {"engine": self.engine, "model_id": self.model_id}

    def close(self) -> None:
        """Free the model's memory."""

    def clear_cache(self) -> None:
        """Release cached memory after an out-of-memory error (engines with a cache override)."""


def template_supports_system(render) -> bool:
    """Whether ``render(messages)`` accepts a system message and keeps its text.

    Examples
    --------
    >>> template_supports_system(lambda m: "".join(x["content"] for x in m))
    True
    >>> template_supports_system(lambda m: m[-1]["content"])
    False
    """
    msgs = [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": "Hello."}]
    try:
        text = render(msgs)
    except Exception:  # noqa: BLE001 - templates raise anything (TemplateError, ValueError, ...)
        return False
    return _SYSTEM_PROBE in text


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def _local_fingerprint(path: Path) -> str:
    """A content hash for a local model directory.

    Small files (configs, tokenizer, template) are hashed whole; a large file (weights)
    by its size and three 1 MiB samples (start, middle, end), so two fine-tunes of one
    architecture differ while a 60 GB checkpoint is fingerprinted in milliseconds.
    """
    h = hashlib.sha256()
    chunk = 1 << 20
    for f in sorted(path.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        h.update(f.name.encode())
        size = f.stat().st_size
        h.update(str(size).encode())
        with open(f, "rb") as fh:
            if size <= 8 * chunk:
                h.update(fh.read())
            else:
                for off in (0, size // 2, size - chunk):
                    fh.seek(off)
                    h.update(fh.read(chunk))
    return "local-sha256:" + h.hexdigest()[:16]


#: Every GenerationConfig field that can change which token greedy decoding picks, with
#: its neutral value. Unset fields would be filled from the checkpoint's own
#: generation_config.json (sampling, repetition penalty, suppressed tokens...).
_NEUTRAL_GENERATION = {
    "do_sample": False, "num_beams": 1, "num_beam_groups": 1, "num_return_sequences": 1,
    "temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": None, "typical_p": 1.0,
    "top_h": None, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "penalty_alpha": None,
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "length_penalty": 1.0,
    "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None,
    "force_words_ids": None, "renormalize_logits": False, "constraints": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "remove_invalid_values": False,
    "exponential_decay_length_penalty": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "sequence_bias": None, "guidance_scale": None,
    "low_memory": None, "watermarking_config": None, "dola_layers": None,
    "min_length": 0, "min_new_tokens": None, "max_length": None, "max_time": None,
    "stop_strings": None, "diversity_penalty": 0.0, "token_healing": False,
    "prompt_lookup_num_tokens": None, "assistant_early_exit": None, "use_cache": True,
    "output_scores": False, "output_logits": False, "return_dict_in_generate": False,
}


def greedy_generation_config(max_new_tokens: int, eos_token_id, pad_token_id, bos_token_id=None):
    """A complete transformers ``GenerationConfig`` for plain greedy decoding.

    Every field that could change the chosen token is set to its neutral value, so
    nothing is inherited from a checkpoint's ``generation_config.json``.

    Examples
    --------
    >>> c = greedy_generation_config(8, [2], 0)  # doctest: +SKIP
    >>> (c.do_sample, c.repetition_penalty, c.num_beams)  # doctest: +SKIP
    (False, 1.0, 1)
    """
    from transformers import GenerationConfig

    cfg = GenerationConfig()
    known = set(vars(cfg))
    values = dict(_NEUTRAL_GENERATION, max_new_tokens=int(max_new_tokens),
                  eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=bos_token_id)
    for k, v in values.items():
        if k in known:
            setattr(cfg, k, v)
    return cfg


def _transformers_version() -> tuple[int, ...]:
    import transformers

    return tuple(int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])


@contextlib.contextmanager
def _frozen_template_clock(date: str):
    """Make chat templates' ``strftime_now`` return ``date`` (ISO) while rendering.

    transformers gives templates a ``strftime_now`` global that reads the wall clock
    (Llama 3.x stamps "Today Date: ..." into the system turn); it is patched at its
    module's ``datetime`` for the duration of the render.
    """
    fixed = _dt.datetime.fromisoformat(date)

    class _Frozen(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return fixed if tz is None else fixed.replace(tzinfo=tz)

    modules = []
    for name in ("transformers.utils.chat_template_utils", "transformers.tokenization_utils_base"):
        mod = __import__("sys").modules.get(name)
        if mod is not None and getattr(mod, "datetime", None) is _dt.datetime:
            modules.append(mod)
    for mod in modules:
        mod.datetime = _Frozen
    try:
        yield
    finally:
        for mod in modules:
            mod.datetime = _dt.datetime


def template_date_kwargs(date: str) -> dict[str, str]:
    """Template variables that pin the date (``date_string``, read by Llama 3.x templates).

    Examples
    --------
    >>> template_date_kwargs("2024-07-26")
    {'date_string': '26 Jul 2024'}
    """
    try:
        d = _dt.date.fromisoformat(str(date))
    except ValueError:
        raise ValueError(f"template_date must be an ISO date YYYY-MM-DD, got {date!r}") from None
    return {"date_string": d.strftime("%d %b %Y")}


def _resolve_revision(model_id: str, revision: str | None) -> str | None:
    """The commit hash of a hub model as loaded (from the cache path), or a local hash."""
    p = Path(model_id)
    if p.is_dir():
        return _local_fingerprint(p)
    try:
        from transformers.utils import cached_file

        f = cached_file(model_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - a missing hash is recorded as None, not fatal
        return revision
    m = re.search(r"snapshots[/\\]([0-9a-f]{40})", str(f))
    return m.group(1) if m else revision


class TransformersBackend(Backend):
    """Generation with Hugging Face transformers.

    Parameters
    ----------
    model : str
        Hub id (``"meta-llama/Llama-2-13b-chat-hf"``) or a local directory.
    tokenizer : str, optional
        Tokenizer id or path when it differs from ``model``.
    revision : str, optional
        Hub revision (branch, tag or commit); the resolved commit hash is recorded.
    device : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    dtype : str
        ``"auto"``: bf16 on CUDA, float32 on CPU; or ``"bfloat16"``, ``"float16"``,
        ``"float32"``.
    trust_remote_code : bool
        Allow model code from the hub; off unless asked for.
    device_map : str, optional
        Passed to ``from_pretrained`` (e.g. ``"auto"`` to spread a large model over
        several GPUs; needs accelerate). Overrides ``device``.
    attn_implementation : str, optional
        ``"sdpa"``, ``"flash_attention_2"``, ``"eager"``; transformers' default otherwise.
    template_date : str
        The date chat templates see as today (ISO ``YYYY-MM-DD``); fixed so prompts do
        not change from day to day.

    Decoding is plain greedy whatever the checkpoint's ``generation_config.json`` asks
    for (sampling, repetition penalty, ...): that file is recorded in :meth:`info` and
    replaced by :func:`greedy_generation_config`. On a GPU the weights load straight onto
    the device (``device_map``), without a full copy in host memory.

    Examples
    --------
    >>> be = TransformersBackend("Qwen/Qwen2.5-0.5B-Instruct")  # doctest: +SKIP
    >>> p = be.render([{"role": "user", "content": "Hi"}])  # doctest: +SKIP
    >>> be.generate([p], DecodingParams(max_new_tokens=8))[0].text  # doctest: +SKIP
    """

    engine = "transformers"

    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        device_map: str | None = None,
        attn_implementation: str | None = None,
        template_date: str = DEFAULT_TEMPLATE_DATE,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_id = str(model)
        self.tokenizer_id = str(tokenizer or model)
        template_date_kwargs(template_date)  # validates
        self.template_date = str(template_date)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"device={device!r} but torch sees no CUDA device; use device='cpu' or 'auto'"
            )
        self.device = torch.device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
        if dtype not in dtypes:
            raise ValueError(f"dtype must be 'auto' or one of {list(dtypes)}, got {dtype!r}")
        self.dtype = dtypes[dtype]
        tok = AutoTokenizer.from_pretrained(
            self.tokenizer_id, revision=revision if tokenizer is None else None,
            trust_remote_code=trust_remote_code,
        )
        tok.padding_side = "left"
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise ValueError(
                    f"tokenizer of {self.tokenizer_id!r} has neither a pad nor an EOS token; "
                    "batched generation needs one of them"
                )
            tok.pad_token = tok.eos_token
        if getattr(tok, "chat_template", None) is None:
            raise ValueError(
                f"tokenizer of {self.tokenizer_id!r} has no chat template; use the model's "
                "instruction-tuned (chat) version, or set tokenizer.chat_template"
            )
        self.tokenizer = tok
        self._ids: dict[str, Any] = {}
        # transformers >= 4.56 takes `dtype=`; older versions only `torch_dtype=`
        dtype_key = "dtype" if _transformers_version() >= (4, 56) else "torch_dtype"
        kwargs: dict[str, Any] = {dtype_key: self.dtype, "trust_remote_code": trust_remote_code}
        if revision is not None:
            kwargs["revision"] = revision
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        if device_map is not None:
            kwargs["device_map"] = device_map
        elif self.device.type != "cpu":
            # load the weights straight onto the device: no full copy in host memory first
            kwargs["device_map"] = {"": str(self.device)}
        model_obj = AutoModelForCausalLM.from_pretrained(self.model_id, **kwargs)
        if "device_map" not in kwargs:
            model_obj = model_obj.to(self.device)
        else:
            self.device = next(model_obj.parameters()).device
        model_obj.eval()
        self.attn_implementation = getattr(model_obj.config, "_attn_implementation", None)
        self.revision = revision
        self.commit = _resolve_revision(self.model_id, revision)
        # The checkpoint's generation defaults (sampling, repetition penalty, top-k...) are
        # recorded, then replaced by a clean greedy config: transformers fills unset
        # generate() settings from model.generation_config, and >= 4.50 even overrides
        # settings equal to the global defaults (do_sample=False) with the model's.
        shipped = model_obj.generation_config
        self.shipped_generation_config = _jsonable(shipped.to_diff_dict())
        eos = set()
        for src in (shipped.eos_token_id, tok.eos_token_id):
            if src is None:
                continue
            eos.update([src] if isinstance(src, int) else list(src))
        if not eos:
            raise ValueError(f"model {self.model_id!r} defines no EOS token; cannot stop generation")
        self.eos_token_ids = tuple(sorted(eos))
        model_obj.generation_config = greedy_generation_config(
            64, list(self.eos_token_ids), tok.pad_token_id, tok.bos_token_id)
        self.model = model_obj

    # -- the seam -------------------------------------------------------------------------
    def render(self, messages: Sequence[dict]) -> str:
        """Apply the tokenizer's chat template with ``add_generation_prompt=True``.

        Templates see :attr:`template_date` as today (``strftime_now``, ``date_string``),
        so a prompt renders the same on any day.
        """
        with _frozen_template_clock(self.template_date):
            return self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True,
                **template_date_kwargs(self.template_date))

    def render_many(self, conversations: Sequence[Sequence[dict]]) -> list[str]:
        """Render many conversations in one call (about twice as fast as one by one)."""
        if not conversations:
            return []
        with _frozen_template_clock(self.template_date):
            return list(self.tokenizer.apply_chat_template(
                [list(c) for c in conversations], tokenize=False, add_generation_prompt=True,
                **template_date_kwargs(self.template_date)))

    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        """Token counts of rendered prompts (special tokens come from the template).

        The token ids are kept (as int32 arrays) until :meth:`generate` uses them, so a
        prompt counted first is not tokenized twice.
        """
        import numpy as np

        enc = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        for p, ids in zip(prompts, enc):
            self._ids[p] = np.asarray(ids, dtype=np.int32)
        return [len(ids) for ids in enc]

    def _encode_left_padded(self, prompts: Sequence[str]):
        """Left-padded input ids and attention mask, from the count cache where possible."""
        import numpy as np
        import torch

        ids = [self._ids.pop(p, None) for p in prompts]
        todo = [i for i, x in enumerate(ids) if x is None]
        if todo:
            enc = self.tokenizer([prompts[i] for i in todo], add_special_tokens=False)
            for i, x in zip(todo, enc["input_ids"]):
                ids[i] = np.asarray(x, dtype=np.int32)
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for r, x in enumerate(ids):
            if len(x):
                input_ids[r, width - len(x):] = x
                mask[r, width - len(x):] = 1
        return torch.from_numpy(input_ids), torch.from_numpy(mask)

    def generate(self, prompts: Sequence[str], params: DecodingParams) -> list[Completion]:
        """Greedy generation for a batch of rendered prompts, left-padded."""
        import torch

        if not prompts:
            return []
        input_ids, attention = self._encode_left_padded(list(prompts))
        input_ids = input_ids.to(self.device)
        attention = attention.to(self.device)
        stop_ids = sorted(set(self.eos_token_ids) | set(params.stop_token_ids))
        gen_config = greedy_generation_config(
            params.max_new_tokens, stop_ids, self.tokenizer.pad_token_id,
            self.tokenizer.bos_token_id)
        # 4.50-4.57 replace settings equal to the global defaults with the model's unless told
        extra = ({"use_model_defaults": False} if (4, 50) <= _transformers_version() < (5, 0)
                 else {})
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention,
                                      generation_config=gen_config, **extra)
        new = out[:, input_ids.shape[1]:].cpu()
        n_prompt = attention.sum(dim=1).cpu().tolist()
        stops = torch.tensor(stop_ids)
        is_stop = torch.isin(new, stops)
        has_stop = is_stop.any(dim=1)
        no_stop = torch.full((new.shape[0],), new.shape[1], dtype=torch.long)
        first = torch.where(has_stop, is_stop.int().argmax(dim=1), no_stop)
        rows = [new[i, : first[i]].tolist() for i in range(new.shape[0])]
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        result = []
        for i, text in enumerate(texts):
            stopped = bool(has_stop[i])
            result.append(Completion(
                text=text,
                n_prompt_tokens=int(n_prompt[i]),
                n_new_tokens=int(first[i]) + (1 if stopped else 0),
                finish_reason="stop" if stopped else "length",
            ))
        return result

    # -- resources ------------------------------------------------------------------------
    def _kv_bytes_per_token(self) -> int:
        c = self.model.config
        c = getattr(c, "text_config", c) or c
        layers = getattr(c, "num_hidden_layers", 32)
        heads = getattr(c, "num_attention_heads", 32)
        kv_heads = getattr(c, "num_key_value_heads", None) or heads
        head_dim = getattr(c, "head_dim", None) or (getattr(c, "hidden_size", 4096) // heads)
        itemsize = self.model.dtype.itemsize if hasattr(self.model.dtype, "itemsize") else 2
        return int(2 * layers * kv_heads * head_dim * itemsize)

    def _activation_bytes_per_token(self) -> int:
        """Prefill activations of one layer per prompt token (hidden states, MLP, logits row)."""
        c = self.model.config
        c = getattr(c, "text_config", c) or c
        hidden = getattr(c, "hidden_size", 4096)
        inter = getattr(c, "intermediate_size", None) or 4 * hidden
        itemsize = self.model.dtype.itemsize if hasattr(self.model.dtype, "itemsize") else 2
        return int((6 * hidden + 3 * inter) * itemsize)

    def token_budget(self, params: DecodingParams) -> int:
        """Batch token budget: on CUDA from free memory over the memory per token.

        A token costs its KV cache (all layers) plus one layer's prefill activations;
        80% of the free memory (after the weights are loaded) is shared out, so the
        batch size follows the device: ~0.5 M tokens for a 7B model on an H200. An
        out-of-memory error still shrinks the batch at run time. On the CPU a fixed
        4,096 tokens keeps batches cache-friendly.
        """
        import torch

        if self.device.type != "cuda":
            return 4096
        free, _ = torch.cuda.mem_get_info(self.device)
        per_token = self._kv_bytes_per_token() + self._activation_bytes_per_token()
        return max(256, int(0.8 * free / per_token))

    def max_positions(self) -> int | None:
        """The model's context length (``max_position_embeddings`` or the like)."""
        c = self.model.config
        c = getattr(c, "text_config", c) or c
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            v = getattr(c, key, None)
            if isinstance(v, int) and v > 0:
                return v
        v = getattr(self.tokenizer, "model_max_length", None)
        return int(v) if isinstance(v, int) and 0 < v < 10**7 else None

    def truncate_prompts(self, prompts: Sequence[str], max_tokens: int) -> list[str]:
        """Cut the middle out of prompts longer than ``max_tokens`` tokens.

        The head (template start, instruction) and the tail (end of the item, generation
        prompt) are kept, half the room each; the token ids are kept exactly as cut, so
        :meth:`generate` sees ``max_tokens`` tokens. Returns the decoded prompts.
        """
        import numpy as np

        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
        out = []
        for p in prompts:
            ids = self._ids.pop(p, None)
            if ids is None:
                ids = np.asarray(self.tokenizer(p, add_special_tokens=False)["input_ids"],
                                 dtype=np.int32)
            if len(ids) <= max_tokens:
                self._ids[p] = ids
                out.append(p)
                continue
            head = max_tokens // 2
            cut = np.concatenate([ids[:head], ids[len(ids) - (max_tokens - head):]])
            text = self.tokenizer.decode(cut.tolist(), skip_special_tokens=False)
            self._ids[text] = cut
            out.append(text)
        return out

    def identity(self) -> dict[str, Any]:
        """Model source, resolved revision and a hash of the model config."""
        p = Path(self.model_id)
        return {
            "engine": self.engine,
            "model": str(p.resolve()) if p.is_dir() else self.model_id,
            "commit": self.commit,
            "config_sha256": hashlib.sha256(
                self.model.config.to_json_string(use_diff=False).encode()).hexdigest()[:16],
            "tokenizer_sha256": hashlib.sha256(
                json.dumps(self.tokenizer.chat_template).encode()).hexdigest()[:16],
        }

    def info(self) -> dict[str, Any]:
        """Model id, resolved revision, tokenizer, dtype, device, EOS ids and versions."""
        cfg = self.model.config
        return {
            "engine": self.engine,
            "model_id": self.model_id,
            "revision": self.revision,
            "commit": self.commit,
            "tokenizer": self.tokenizer_id,
            "tokenizer_class": type(self.tokenizer).__name__,
            "chat_template_sha256": hashlib.sha256(
                json.dumps(self.tokenizer.chat_template).encode()
            ).hexdigest()[:16],
            "architecture": (getattr(cfg, "architectures", None) or [type(self.model).__name__])[0],
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "eos_token_ids": list(self.eos_token_ids),
            "attn_implementation": self.attn_implementation,
            "max_positions": self.max_positions(),
            "template_date": self.template_date,
            # the checkpoint's own generation defaults (sampling, repetition penalty...) are
            # not used: decoding is plain greedy; recorded so a reader sees what was left out
            "model_generation_config_ignored": self.shipped_generation_config,
            "system_role": self.supports_system_role(),
            "versions": package_versions(),
        }

    def close(self) -> None:
        """Drop the model and return its memory to the device.

        On CUDA a full garbage collection runs first so that no reference cycle keeps the
        weights alive, then the allocator cache is emptied. On the CPU dropping the
        reference is enough (a full collection costs about a second in a large process).
        """
        import torch

        on_cuda = self.device.type == "cuda"
        self.model = None
        self._ids.clear()
        if on_cuda:
            gc.collect()
            torch.cuda.empty_cache()

    def clear_cache(self) -> None:
        """Release cached allocator blocks (after an out-of-memory error)."""
        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

"""The judge detector on a loopback OpenAI-compatible server and on the tiny model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from refusalstats.inference import JUDGE_PROMPT, JudgeDetector, OpenAIBackend

import refusalstats as rs

sys.path.insert(0, str(Path(__file__).parent))
from api_server import FakeChatServer


def _judge_answer(messages):
    """Canned judgments: read the answer out of the judge prompt and classify it."""
    text = messages[-1]["content"]
    answer = text.split('RESPONSE: "', 1)[1].rsplit('"\n\nCLASS:', 1)[0].lower()
    if "sorry" in answer and "but here" in answer:
        return "3_partial_refusal"
    if "sorry" in answer or "cannot" in answer:
        return "2_full_refusal"
    if "weird" in answer:
        return "I would rather not say."
    return "1_full_compliance"


ANSWERS = ["Neutral.", "I'm sorry, I cannot classify this.", "Sorry, but here is my answer: polite",
           "Entailment", "Neutral.", "It does not cannot apply"]


def test_judge_classifies_caches_and_batches_on_a_loopback_server():
    with FakeChatServer(model="judge-model", answer=_judge_answer) as server:
        judge = rs.detector("judge", backend="openai", model="judge-model",
                            base_url=server.url, batch_size=2, concurrency=2)
        assert isinstance(judge, JudgeDetector)
        flags = judge(ANSWERS)
        assert flags.tolist() == [False, True, True, False, False, True]
        assert judge.classify(ANSWERS[:3]) == ["full_compliance", "full_refusal",
                                               "partial_refusal"]
        posts = server.posts()
        assert len(posts) == 5  # five distinct answers, each judged once
        body = posts[0]["body"]
        assert body["temperature"] == 0 and body["max_tokens"] == 8
        assert body["messages"][0]["content"].startswith(JUDGE_PROMPT.split("{response}")[0])
        judge(ANSWERS)  # cached: no new request
        assert len(server.posts()) == 5
        strict = JudgeDetector(judge.backend, partial_is_refusal=False)
        assert strict(ANSWERS[:3]).tolist() == [False, True, False]
        ex = judge.explain(ANSWERS[:3])
        assert ex["rule"].tolist() == ["", "full_refusal", "partial_refusal"]


def test_rules_first_then_the_judge_for_what_they_leave():
    with FakeChatServer(model="judge-model", answer=_judge_answer) as server:
        judge = JudgeDetector(OpenAIBackend("judge-model", base_url=server.url))
        combo = rs.detector("paper") | judge
        flags = combo(ANSWERS)
        assert flags.tolist() == [False, True, True, False, False, True]
        judged = {p["body"]["messages"][0]["content"].split('RESPONSE: "')[1].split('"')[0]
                  for p in server.posts()}
        # "I'm sorry..." and "Sorry, but..." start with P1's prefixes: never sent to the judge
        assert judged == {"Neutral.", "Entailment", "It does not cannot apply"}


def test_unparsed_replies_are_counted_not_refusals():
    with FakeChatServer(model="j", answer=_judge_answer) as server:
        judge = JudgeDetector("openai", "j", base_url=server.url)
        with pytest.warns(UserWarning, match="1 repl.* named no class"):
            assert judge(["A weird answer", "Neutral"]).tolist() == [False, False]
        assert judge.n_unparsed == 1 and judge.cache["A weird answer"] == "unparsed"


def test_judge_on_the_tiny_model(tiny_backend):
    judge = rs.detector("judge", backend=tiny_backend, batch_size=3, max_new_tokens=3)
    with pytest.warns(UserWarning):  # a random model names no class
        flags = judge(ANSWERS)
    assert flags.dtype == bool and len(flags) == len(ANSWERS)
    assert set(judge.cache) == set(ANSWERS)
    assert np.array_equal(judge(ANSWERS), flags)  # cached, deterministic


def test_judge_settings_errors():
    with pytest.raises(ValueError, match="needs model="):
        rs.detector("judge", backend="openai")
    with pytest.raises(ValueError, match="'openai', 'transformers'"):
        rs.detector("judge", backend="vllm", model="m")
    with pytest.raises(TypeError, match="Backend"):
        rs.detector("judge", backend=object())
    with pytest.raises(ValueError, match="response"):
        JudgeDetector(object(), prompt="no placeholder")


# ---------------------------------------------------------------------------- a fake backend
class _FakeJudgeBackend:
    """Backend-shaped judge: 'full_refusal' when the answer says sorry; logs what it was sent."""

    def __init__(self):
        self.sent = []

    def render(self, messages):
        return messages[-1]["content"]

    def generate(self, prompts, params):
        from types import SimpleNamespace

        self.sent.append(len(prompts))
        return [SimpleNamespace(text="2_full_refusal" if "sorry" in p.split("RESPONSE:")[1].lower()
                                else "1_full_compliance") for p in prompts]


def test_judge_detector_parses_caches_batches_and_composes():
    from refusalstats.inference import parse_judgment

    assert [parse_judgment(t) for t in ("1_full_compliance", "CLASS: 2_full_refusal",
                                        "3", "partial refusal.", "no idea")] == \
        ["full_compliance", "full_refusal", "partial_refusal", "partial_refusal", "unparsed"]
    be = _FakeJudgeBackend()
    judge = JudgeDetector(be, batch_size=2)
    texts = ["Neutral", "Well, sorry.", "Neutral", "Polite", "Oh sorry", "x"]
    assert judge(texts).tolist() == [False, True, False, False, True, False]
    assert be.sent == [2, 2, 1]  # five distinct answers in batches of two
    assert judge(texts[:3]).tolist() == [False, True, False] and be.sent == [2, 2, 1]
    be2 = _FakeJudgeBackend()
    combo = rs.detector("paper") | JudgeDetector(be2)
    assert combo(["Sorry, no.", "Well, sorry."]).tolist() == [True, True]
    assert be2.sent == [1]  # the rule caught the first; only the second was judged

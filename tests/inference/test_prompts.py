"""Prompt layout and persona placement, with real chat templates."""

from __future__ import annotations

import pandas as pd
import pytest
from refusalstats.inference import (
    TransformersBackend,
    build_user_prompts,
    chat_messages,
    render_chats,
    template_supports_system,
)

import refusalstats as rs
from refusalstats.design import PERSONAS, TASKS, TEMPLATES

PHRASE = {p.name: p.phrase for p in PERSONAS}


@pytest.fixture(scope="module")
def design():
    items = pd.DataFrame({
        "item_id": ["n1", "n2", "t1", "t2"],
        "task": ["nli", "nli", "offensiveness", "offensiveness"],
        "premise": ["A dog runs.", "It rains.", None, None],
        "hypothesis": ["An animal moves.", "It is dry.", None, None],
        "text": [None, None, "You are great.", "Go away."],
        "gold_label": ["entailment", "contradiction", 1, 4],
    })
    return rs.sample_design(items, k=4, seed=2, setting="both")


def test_template_placement_lays_out_the_item_after_the_instruction(design):
    out = build_user_prompts(design, "template")
    nli = out[(out["item_id"] == "n1")].iloc[0]
    assert nli["user_text"] == (nli["prompt_text"]
                                + "\n\nPremise: A dog runs.\nHypothesis: An animal moves.")
    off = out[(out["item_id"] == "t2")].iloc[0]
    assert off["user_text"] == off["prompt_text"] + "\n\nText: Go away."
    assert out["system_text"].isna().all()
    assert (out["instruction"] == out["prompt_text"]).all()
    assert len(out) == len(design)


def test_system_placement_uses_persona_free_instruction_and_you_are(design):
    out = build_user_prompts(design, "system")
    persona = out[out["setting"] == "persona"]
    free = out[out["setting"] == "persona-free"].set_index(["item_id", "prompt"])
    for _, row in persona.iterrows():
        # the instruction is the design's own persona-free text for this item and template
        assert row["instruction"] == free.loc[(row["item_id"], row["prompt"]), "prompt_text"]
        assert row["system_text"] == f"You are {PHRASE[row['persona']]}."
        assert PHRASE[row["persona"]] not in row["user_text"]
    assert out.loc[out["setting"] == "persona-free", "system_text"].isna().all()


def test_missing_item_text_and_unknown_persona_are_named(design):
    with pytest.raises(KeyError, match=r"lacks the text column\(s\) \['premise', 'hypothesis'\]"):
        build_user_prompts(design.drop(columns=["premise", "hypothesis"]), "template")
    items = pd.DataFrame({"item_id": ["n1", "n2"], "task": "nli",
                          "premise": ["P1", "P2"], "hypothesis": ["H1", "H2"]})
    only_nli = design[design["task"] == "nli"].drop(columns=["premise", "hypothesis"])
    merged = build_user_prompts(only_nli, "template", items=items)
    assert merged["user_text"].str.contains("Premise: P").all()
    odd = design.copy()
    odd["persona"] = odd["persona"].cat.add_categories(["Pirate"])
    odd.loc[odd.index[0], "persona"] = "Pirate"
    with pytest.raises(KeyError, match="persona 'Pirate' is not in the persona list"):
        build_user_prompts(odd, "system")
    with pytest.raises(ValueError, match="placement must be one of"):
        build_user_prompts(design, "prefix")


def test_chat_messages_with_and_without_system_role():
    msgs, user, system = chat_messages("Classify.", "You are a woman.", system_role=True)
    assert msgs[0] == {"role": "system", "content": "You are a woman."}
    assert (user, system) == ("Classify.", "You are a woman.")
    msgs, user, system = chat_messages("Classify.", "You are a woman.", system_role=False)
    assert msgs == [{"role": "user", "content": "You are a woman.\n\nClassify."}]
    assert user == "You are a woman.\n\nClassify." and system is None
    msgs, user, system = chat_messages("Classify.", None, system_role=True)
    assert msgs == [{"role": "user", "content": "Classify."}] and system is None


def test_system_role_detection_on_real_templates(tiny_model_dir, no_system_tokenizer_dir,
                                                 drops_system_tokenizer_dir):
    with_system = TransformersBackend(str(tiny_model_dir), device="cpu")
    raises = TransformersBackend(str(tiny_model_dir), tokenizer=str(no_system_tokenizer_dir),
                                 device="cpu")
    drops = TransformersBackend(str(tiny_model_dir), tokenizer=str(drops_system_tokenizer_dir),
                                device="cpu")
    assert with_system.supports_system_role() is True
    assert raises.supports_system_role() is False
    assert drops.supports_system_role() is False
    # the raising template really raises: the check is not a guess
    with pytest.raises(Exception, match="System role not supported"):
        raises.render([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])

    user, system = ["Label this text as polite or impolite.\n\nText: Hi."], ["You are a man."]
    r1, u1, s1 = render_chats(user, system, with_system.render, with_system.supports_system_role())
    assert "<|im_start|>system\nYou are a man.<|im_end|>" in r1[0]
    assert s1 == ["You are a man."] and u1 == user
    r2, u2, s2 = render_chats(user, system, raises.render, raises.supports_system_role())
    assert "<|im_start|>system" not in r2[0]
    assert "<|im_start|>user\nYou are a man.\n\nLabel this text" in r2[0]
    assert r2[0].endswith("<|im_start|>assistant\n")  # add_generation_prompt
    assert s2 == [None] and u2 == ["You are a man.\n\n" + user[0]]
    with_system.close(), raises.close(), drops.close()


def test_template_supports_system_with_plain_callables():
    assert template_supports_system(lambda m: " ".join(x["content"] for x in m))
    assert not template_supports_system(lambda m: 1 / 0)


def test_design_personas_and_templates_cover_every_persona_row():
    # every P1 persona has a phrase, every persona template a persona-free variant
    items = pd.DataFrame({"item_id": ["a"], "task": "politeness", "text": ["Hello."],
                          "gold_label": [3]})
    full = rs.sample_design(items, full_factorial=True)
    out = build_user_prompts(full, "system")
    assert len(out) == len(PERSONAS) * sum(t.family == TASKS["politeness"].family
                                           for t in TEMPLATES)
    assert out["system_text"].notna().all()
    assert not out["instruction"].str.contains("person", case=False).any()


def test_batched_rendering_equals_one_by_one(tiny_backend):
    users = [f"Label this text as polite or impolite.\n\nText: hello {i}" for i in range(5)]
    systems = [None, "You are a man.", None, "You are a woman.", "You are an Atheist person."]
    one = render_chats(users, systems, tiny_backend.render, True)
    many = render_chats(users, systems, tiny_backend.render, True,
                        render_many=tiny_backend.render_many)
    assert one == many
    assert "<|im_start|>system\nYou are a man.<|im_end|>" in many[0][1]

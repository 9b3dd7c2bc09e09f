"""Chat formatting: from the design's prompts table to the messages a model sees.

The design's ``prompt_text`` is the instruction ("Given a premise and a hypothesis, would
a Black person classify the relationship as entailment, contradiction, or neutral?").
The text under classification follows it after an empty line, always laid out the same
way::

    <instruction>

    Premise: <premise>
    Hypothesis: <hypothesis>

(``Text: <text>`` for the other tasks). Two persona placements:

``"template"``  (P1) the persona is inside the instruction; no system message.
``"system"``    (P2) the instruction is the template's persona-free variant and the
                persona goes into a system message "You are {persona}.". A model whose
                chat template has no system role (it raises, or drops the text) gets that
                sentence as a prefix of the user turn followed by an empty line. This is
                detected by rendering a probe, never guessed from the model name.

Persona-free rows never get a system message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import pandas as pd

from refusalstats.design import NO_PERSONA, PERSONAS, TASKS, TEMPLATES, Persona, Task, Template

from .datasets import TASK_FIELDS

__all__ = [
    "PLACEMENTS",
    "SYSTEM_FORMAT",
    "build_user_prompts",
    "chat_messages",
    "item_block",
    "render_chats",
]

PLACEMENTS: tuple[str, ...] = ("template", "system")

#: P2's system message; ``{persona}`` is the persona's noun phrase ("a Black person").
SYSTEM_FORMAT = "You are {persona}."

_FIELD_TITLES = {"premise": "Premise", "hypothesis": "Hypothesis", "text": "Text"}


def item_block(values: Mapping[str, object], fields: Sequence[str]) -> str:
    """Lay out the text under classification, one ``Field: value`` line per field.

    Examples
    --------
    >>> item_block({"premise": "A man sleeps.", "hypothesis": "Someone rests."},
    ...            ["premise", "hypothesis"])
    'Premise: A man sleeps.\\nHypothesis: Someone rests.'
    """
    lines = []
    for f in fields:
        title = _FIELD_TITLES.get(f, f.replace("_", " ").capitalize())
        lines.append(f"{title}: {str(values[f]).strip()}")
    return "\n".join(lines)


def _task_fields(task: str, columns: Sequence[str],
                 fields: Mapping[str, Sequence[str]] | None) -> tuple[str, ...]:
    if fields and task in fields:
        out = tuple(fields[task])
    else:
        out = TASK_FIELDS.get(task, ("text",))
    missing = [f for f in out if f not in columns]
    if missing:
        raise KeyError(
            f"task {task!r}: the prompts table lacks the text column(s) {missing} to show the "
            "model; build the design from items that carry them, pass items=..., or map the "
            "task's fields with fields={task: [...]}"
        )
    return out


def build_user_prompts(
    prompts: pd.DataFrame,
    placement: str = "template",
    *,
    items: pd.DataFrame | None = None,
    personas: Sequence[Persona] | None = None,
    templates: Sequence[Template] | None = None,
    tasks: Mapping[str, Task] | None = None,
    fields: Mapping[str, Sequence[str]] | None = None,
    system_format: str = SYSTEM_FORMAT,
) -> pd.DataFrame:
    """Add the user turn and the system message to every row of a prompts table.

    Parameters
    ----------
    prompts : DataFrame
        The design (see :func:`refusalstats.design.sample_design`): ``item_id``,
        ``task``, ``persona``, ``prompt``, ``setting``, ``prompt_text`` and the items'
        text columns.
    placement : {"template", "system"}
        Where the persona goes (see the module docstring).
    items : DataFrame, optional
        Items to take the text columns from (joined on ``task`` and ``item_id``) when
        the prompts table lacks them.
    personas, templates, tasks : optional
        The design's lists when they are not P1's (needed for ``"system"``: the persona's
        noun phrase and the template's persona-free text).
    fields : mapping, optional
        Task -> text columns shown to the model, for tasks outside
        :data:`~refusalstats.inference.datasets.TASK_FIELDS`.
    system_format : str
        The system message, with ``{persona}``.

    Returns
    -------
    DataFrame
        A copy with ``instruction`` (the instruction shown), ``user_text`` (instruction,
        empty line, the item's text) and ``system_text`` (``None`` where there is none).

    Examples
    --------
    >>> import pandas as pd, refusalstats as rs
    >>> items = pd.DataFrame({"item_id": ["a"], "task": "politeness", "text": ["Thanks!"],
    ...                       "gold_label": [5]})
    >>> d = rs.sample_design(items, k=1, seed=0)
    >>> u = build_user_prompts(d, "system")
    >>> print(u["system_text"][0].startswith("You are "), u["user_text"][0].endswith("Text: Thanks!"))
    True True
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    need = ["item_id", "task", "persona", "prompt", "setting", "prompt_text"]
    missing = [c for c in need if c not in prompts.columns]
    if missing:
        raise KeyError(
            f"the prompts table lacks column(s) {missing}; make it with "
            "refusalstats.sample_design(items, ...) or `refusalstats design`"
        )
    df = prompts.copy()
    if items is not None:
        text_cols = [c for c in items.columns
                     if c not in ("item_id", "task", "gold_label") and c not in df.columns]
        if text_cols:
            key = items[["task", "item_id", *text_cols]].copy()
            key["task"] = key["task"].astype(str)
            key["item_id"] = key["item_id"].astype(str)
            left = df[["task", "item_id"]].astype(str)
            merged = left.merge(key, on=["task", "item_id"], how="left", validate="many_to_one")
            for c in text_cols:
                df[c] = merged[c].to_numpy()
    tasks_map = dict(TASKS if tasks is None else tasks)
    task_values = df["task"].astype(str).to_numpy()
    blocks = pd.Series(index=df.index, dtype=object)
    for task in pd.unique(task_values):
        mask = task_values == task
        flds = _task_fields(task, df.columns, fields)
        sub = df.loc[mask, list(flds)]
        bad = sub.isna().any(axis=1)
        if bad.any():
            ids = df.loc[mask].loc[bad, "item_id"].astype(str).head(5).tolist()
            raise ValueError(
                f"task {task!r}: {int(bad.sum())} row(s) have no text in {list(flds)} "
                f"(item_id {ids}); every prompt needs the item it asks about"
            )
        blocks[mask] = [item_block(r, flds) for r in sub.to_dict("records")]

    instruction = df["prompt_text"].astype(str).to_numpy().copy()
    system = [None] * len(df)
    if placement == "system":
        persona_map = {p.name: p for p in (PERSONAS if personas is None else personas)}
        tmpl_map = {(t.family, t.prompt): t for t in (TEMPLATES if templates is None else templates)}
        settings = df["setting"].astype(str).to_numpy()
        persona_values = df["persona"].astype(str).to_numpy()
        prompt_values = df["prompt"].astype(str).to_numpy()
        for i in range(len(df)):
            if settings[i] != "persona" or persona_values[i] == NO_PERSONA:
                continue
            name = persona_values[i]
            if name not in persona_map:
                raise KeyError(
                    f"persona {name!r} is not in the persona list; pass personas=[Persona(...)] "
                    "(refusalstats.design.Persona) with its noun phrase"
                )
            task = tasks_map.get(task_values[i])
            if task is None:
                raise KeyError(f"task {task_values[i]!r} unknown; pass tasks={{...}}")
            tmpl = tmpl_map.get((task.family, prompt_values[i]))
            if tmpl is None:
                raise KeyError(
                    f"no template {prompt_values[i]!r} for task family {task.family!r}; "
                    "pass templates=[...] as used in the design"
                )
            labels = {f"label{j + 1}": lab for j, lab in enumerate(task.labels)}
            instruction[i] = tmpl.free_text.format(**labels)
            system[i] = system_format.format(persona=persona_map[name].phrase)
    df["instruction"] = instruction
    df["user_text"] = [f"{ins}\n\n{blk}" for ins, blk in zip(instruction, blocks.to_numpy())]
    df["system_text"] = pd.Series(system, index=df.index, dtype=object)
    df["placement"] = placement
    return df


def chat_messages(user_text: str, system_text: str | None, system_role: bool
                  ) -> tuple[list[dict], str, str | None]:
    """The chat messages for one prompt, and the user / system text actually sent.

    Without a system role the system text becomes a prefix of the user turn followed by
    an empty line (as P2 did), and the returned system text is ``None``.

    Examples
    --------
    >>> msgs, user, system = chat_messages("Classify: hi", "You are a man.", system_role=False)
    >>> msgs
    [{'role': 'user', 'content': 'You are a man.\\n\\nClassify: hi'}]
    """
    if system_text is None or (isinstance(system_text, float) and math.isnan(system_text)):
        return [{"role": "user", "content": user_text}], user_text, None
    if system_role:
        return ([{"role": "system", "content": system_text},
                 {"role": "user", "content": user_text}], user_text, system_text)
    merged = f"{system_text}\n\n{user_text}"
    return [{"role": "user", "content": merged}], merged, None


def render_chats(
    user_texts: Sequence[str],
    system_texts: Sequence[str | None],
    render: Callable[[list[dict]], str],
    system_role: bool,
    render_many: Callable[[list[list[dict]]], list[str]] | None = None,
) -> tuple[list[str], list[str], list[str | None]]:
    """Render many prompts with a chat template.

    Returns the rendered prompt strings and the user / system text actually sent.
    ``render_many`` (e.g. ``Backend.render_many``), when given, renders all at once.

    Examples
    --------
    >>> r = lambda m: "|".join(x["role"] + ":" + x["content"] for x in m)
    >>> render_chats(["hi"], ["You are a man."], r, system_role=True)[0]
    ['system:You are a man.|user:hi']
    """
    convs, users, systems = [], [], []
    for u, s in zip(user_texts, system_texts):
        msgs, user, system = chat_messages(u, s, system_role)
        convs.append(msgs)
        users.append(user)
        systems.append(system)
    rendered = render_many(convs) if render_many is not None else [render(c) for c in convs]
    return list(rendered), users, systems

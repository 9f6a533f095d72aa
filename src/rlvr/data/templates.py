r"""Prompt templates: ``data.template`` (and ``rlvr eval --template``) is a template's name or a format string.

A template is the user message, a ``str.format`` string over the row (``{prompt}`` is the problem text; sources
with row fields may name any other field), an optional system message, and whether it asks for the reasoning in
``<think>`` tags (then the format reward, ``reward.format_weight``, also requires one think block before the
answer: ``rlvr.rewards.extract.format_score``). Both messages go through the model's chat template
(``rlvr.models.encode_prompt``); a system message needs a tokenizer with a chat template (the tiny character models
have none: use a template without one there). ``model.system_prompt``, when set, replaces the template's system
message.

The named ones (the prompts are quoted from their sources):

- ``plain``: the problem as it is.
- ``boxed``: the problem, then "Please reason step by step, and put your final answer within \boxed{}." in the user
  message: DeepSeek-R1's usage recommendation for maths (model card of deepseek-ai/DeepSeek-R1, arXiv 2501.12948),
  the same sentence as Qwen2.5-Math's system prompt. Works with any chat template (no system message); the
  benchmark presets' default.
- ``qwen_math``: that sentence as the system message, the problem as the user message, as the Qwen2.5-Math README
  shows for chain-of-thought (QwenLM/Qwen2.5-Math; arXiv 2409.12122).
- ``r1``: DeepSeek-R1-Zero's instruction (arXiv 2501.12948, Table 1) as the system message: reasoning in
  ``<think> </think>``, the answer in ``<answer> </answer>``; the problem as the user message. Asks for think tags.

A string that contains ``{`` is a format string (``"Q: {question}\nA:"``, no system message, no think tags); any
other string must be a registered name. None means the data source's default template (its ``default_template``
fact: the benchmark presets use ``boxed``), else ``plain``.
"""
from __future__ import annotations

from dataclasses import dataclass

from rlvr.data.base import DataError
from rlvr.registry import Registry

__all__ = ["Template", "template", "names", "register_template", "STEP_BY_STEP", "R1_ZERO"]

STEP_BY_STEP = "Please reason step by step, and put your final answer within \\boxed{}."
"""Qwen2.5-Math's chain-of-thought system prompt (QwenLM/Qwen2.5-Math README), also DeepSeek-R1's recommended
instruction for maths problems (deepseek-ai/DeepSeek-R1 model card)."""

R1_ZERO = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
           "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
           "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
           "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.")
"""DeepSeek-R1-Zero's training template (arXiv 2501.12948, Table 1) without its "User: prompt. Assistant:" frame,
which the chat template provides."""


@dataclass(frozen=True)
class Template:
    """A prompt template: the user message (``str.format`` over the row), an optional system message, and whether
    the completion is asked to reason inside ``<think>`` tags."""

    name: str
    user: str = "{prompt}"
    system: str | None = None
    think: bool = False


_REGISTRY: Registry[Template] = Registry("prompt template")


def register_template(t: Template) -> Template:
    """Add a named template (a name without ``{``, ``:`` or spaces); returns it."""
    if not t.name or any(c in t.name for c in "{}: "):
        raise ValueError(f"template name {t.name!r} must be non-empty, without braces, colons or spaces")
    _REGISTRY.add(t.name, t)
    return t


def names() -> list[str]:
    """Sorted names of the registered templates."""
    return _REGISTRY.names()


def template(spec: str | None, default: str | None = None) -> Template:
    """The template ``spec`` names (module docstring): None -> ``default`` (a source's default) or ``plain``; a
    string with ``{`` -> a format-string template; else a registered name (DataError listing them)."""
    if spec is None:
        spec = default or "plain"
    if not isinstance(spec, str) or not spec:
        raise DataError(f"template must be a template name or a format string, got {spec!r}")
    if "{" in spec:
        return Template(name="custom", user=spec)
    if spec not in _REGISTRY:
        raise DataError(f"unknown prompt template {spec!r}; named templates: {', '.join(names())} (or a format "
                        "string naming row fields, such as '{prompt}')")
    return _REGISTRY.entry(spec)


register_template(Template("plain"))
register_template(Template("boxed", user="{prompt}\n" + STEP_BY_STEP.replace("{}", "{{}}")))
register_template(Template("qwen_math", system=STEP_BY_STEP))
register_template(Template("r1", system=R1_ZERO, think=True))

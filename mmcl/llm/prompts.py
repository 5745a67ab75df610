"""Instructions asked about each RGB strip: templates with ``{target}`` and ``{action}`` fields.

The built-in sets are the paper's examples (MMCL, ACM MM 2024, Sec. 3.3):

* ``paper-yesno``: "Whether the {target} is {action}?" for (person, holding objects),
  (hand, touching head), (hand, touching foot);
* ``paper-describe``: "Please describe the {target}." for person, hand, foot;
* ``paper``: both.

The default, one question as in the upstream BLIP script, is ``paper-yesno``'s first prompt.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Sequence

from mmcl.errors import MMCLError

YESNO_TEMPLATE = "Whether the {target} is {action}?"
DESCRIBE_TEMPLATE = "Please describe the {target}."
PAPER_PAIRS = (("person", "holding objects"), ("hand", "touching head"), ("hand", "touching foot"))
PAPER_TARGETS = ("person", "hand", "foot")

PROMPT_SETS: dict[str, tuple[str, ...]] = {
    "paper-yesno": tuple(YESNO_TEMPLATE.format(target=t, action=a) for t, a in PAPER_PAIRS),
    "paper-describe": tuple(DESCRIBE_TEMPLATE.format(target=t) for t in PAPER_TARGETS),
}
PROMPT_SETS["paper"] = PROMPT_SETS["paper-yesno"] + PROMPT_SETS["paper-describe"]
DEFAULT_PROMPTS: tuple[str, ...] = PROMPT_SETS["paper-yesno"][:1]

_FIELDS = {"target", "action"}
_YESNO_STARTS = {"whether", "is", "are", "does", "do", "did", "can", "could", "has", "have", "was",
                 "were", "will", "would", "should"}


@dataclass(frozen=True)
class Pair:
    """Values for one expansion of a template."""

    target: str
    action: str = ""

    @classmethod
    def parse(cls, text: str) -> "Pair":
        """``TARGET`` or ``TARGET:ACTION`` (as given to ``--pair``)."""
        target, _, action = text.partition(":")
        if not target.strip():
            raise MMCLError(f"--pair {text!r}: expected TARGET or TARGET:ACTION, e.g. 'hand:touching head'")
        return cls(target.strip(), action.strip())


def template_fields(template: str) -> set[str]:
    """The ``{field}`` names a template uses (unknown ones are an error naming the template)."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise MMCLError(f"prompt {template!r}: {exc} (write literal braces as {{{{ and }}}})") from exc
    unknown = fields - _FIELDS
    if unknown:
        raise MMCLError(f"prompt {template!r}: unknown field(s) {sorted(unknown)}; templates may use {{target}} and {{action}}")
    return fields


def expand_prompts(templates: Sequence[str], pairs: Sequence[Pair] = ()) -> list[str]:
    """Fill each template with each pair (in order, duplicates dropped). A template without
    fields is used as it is; one with fields needs ``pairs`` (an action only where it uses one)."""
    out: list[str] = []
    for template in templates:
        fields = template_fields(template)
        if not fields:
            filled = [template]
        elif not pairs:
            raise MMCLError(
                f"prompt {template!r} has fields {sorted(fields)} but no --pair was given "
                "(e.g. --pair 'person:holding objects')"
            )
        else:
            filled = []
            for pair in pairs:
                if "action" in fields and not pair.action:
                    raise MMCLError(f"prompt {template!r} needs an action; --pair {pair.target!r} has none (use TARGET:ACTION)")
                filled.append(template.format(target=pair.target, action=pair.action))
        for p in filled:
            if p not in out:
                out.append(p)
    if not out:
        raise MMCLError("no prompts: give --prompt TEXT or --prompt-set NAME")
    return out


def resolve_prompts(prompts: Sequence[str] = (), prompt_set: str | None = None, pairs: Sequence[str] = ()) -> list[str]:
    """The final prompt list from the command-line options (defaults to :data:`DEFAULT_PROMPTS`)."""
    templates: list[str] = []
    if prompt_set:
        if prompt_set not in PROMPT_SETS:
            raise MMCLError(f"unknown prompt set {prompt_set!r}; choose one of {sorted(PROMPT_SETS)}")
        templates += PROMPT_SETS[prompt_set]
    templates += list(prompts)
    if not templates:
        templates = list(DEFAULT_PROMPTS)
    return expand_prompts(templates, [Pair.parse(p) for p in pairs])


def is_yes_no(prompt: str) -> bool:
    """Whether a prompt is a yes/no question (its first word is an auxiliary like "Whether", "Is")."""
    words = prompt.strip().split()
    return bool(words) and words[0].lower().strip("\"'(") in _YESNO_STARTS

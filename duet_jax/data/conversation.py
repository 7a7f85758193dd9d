"""LLaVA-1.5 conversation templates: `vicuna_v1` (instruction tuning, evaluation)
and `plain` (projector pretraining).

Reproduces LLaVA's `Conversation.get_prompt` for the two separator styles used by
LLaVA-1.5 (`SeparatorStyle.TWO` and `SeparatorStyle.PLAIN`), plus the
`preprocess_multimodal` rewrite that moves `<image>` to the front of its turn.
Pure string code: no tokenizer, no JAX.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

IMAGE_TOKEN = "<image>"

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# llava_v1 (Video-LLaVA's eval scripts): vicuna_v1's system with "human" for "user" (twice)
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
MEDIA_PLACEHOLDER = {"image": "<image>", "video": "<video>"}

# A message is (role, text); text None means "open turn" (the prompt ends with "ROLE:").
Message = Tuple[str, Optional[str]]


@dataclasses.dataclass(frozen=True)
class Template:
    """A LLaVA conversation template.

    style "two": `system + sep + (role + ": " + msg + seps[i % 2])*`, an open turn
    renders as `role + ":"`; style "plain": `msg + sep` per message, no roles.
    """
    name: str
    system: str
    roles: Tuple[str, str]
    style: str          # "two" | "plain"
    sep: str
    sep2: Optional[str]

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt string of LLaVA's `get_prompt` for these messages."""
        if self.style == "two":
            seps = (self.sep, self.sep2)
            out = self.system + seps[0]
            for i, (role, text) in enumerate(messages):
                # LLaVA tests truthiness: an empty message renders as an open turn.
                if text:
                    out += role + ": " + text + seps[i % 2]
                else:
                    out += role + ":"
            return out
        if self.style == "plain":
            out = self.system
            for _role, text in messages:
                out += (text + self.sep) if text else ""
            return out
        raise ValueError(f"unknown template style {self.style!r}; expected 'two' or 'plain'")


VICUNA_V1 = Template(name="vicuna_v1", system=VICUNA_V1_SYSTEM, roles=("USER", "ASSISTANT"),
                     style="two", sep=" ", sep2="</s>")
PLAIN = Template(name="plain", system="", roles=("", ""), style="plain", sep="\n", sep2=None)

TEMPLATES = {"vicuna_v1": VICUNA_V1, "v1": VICUNA_V1, "plain": PLAIN}


def get_template(name: str) -> Template:
    """Template by name ("vicuna_v1" / its LLaVA alias "v1", or "plain")."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown conversation template {name!r}; "
                         f"use one of {sorted(TEMPLATES)}") from None


def build_eval_prompt(text: str, *, has_image: bool = True, template: str = "vicuna_v1") -> str:
    """docs/EVAL.md §0 prompt: user message `"<image>\\n" + text`, open assistant turn.

    >>> build_eval_prompt("Q?").endswith("USER: <image>\\nQ? ASSISTANT:")
    True
    """
    conv = get_template(template)
    if conv.style != "two":
        raise ValueError(f"evaluation prompts use a chat template, not {template!r}")
    message = (IMAGE_TOKEN + "\n" + text) if has_image else text
    return conv.render([(conv.roles[0], message), (conv.roles[1], None)])


def move_image_to_front(value: str) -> str:
    """LLaVA's `preprocess_multimodal` rewrite of a turn holding `<image>`.

    Deletes every `<image>`, strips, prefixes `"<image>\\n"` and strips again
    (mm_use_im_start_end=False, non-mmtag version). Turns without `<image>` are
    returned unchanged, as in LLaVA.
    """
    if IMAGE_TOKEN not in value:
        return value
    value = value.replace(IMAGE_TOKEN, "").strip()
    return (IMAGE_TOKEN + "\n" + value).strip()


def training_messages(turns: Sequence[Tuple[str, str]], template: Template) -> list:
    """Map LLaVA-JSON turns `[(from, value)]` to template messages `[(role, value)]`.

    Mirrors `preprocess_v1`: a leading "gpt" turn is dropped, then roles must
    alternate human/gpt (callers validate beforehand and report record indices).
    """
    roles = {"human": template.roles[0], "gpt": template.roles[1]}
    if turns and turns[0][0] != "human":
        turns = turns[1:]
    return [(roles[src], value) for src, value in turns]


def build_training_conversation(turns: Sequence[Tuple[str, str]], template: str = "vicuna_v1",
                                *, has_image: bool = False) -> str:
    """The full training string LLaVA tokenizes for one record.

    `turns` are `(from, value)` pairs with from in {"human", "gpt"}. With an
    image, each turn holding `<image>` is first rewritten by
    `move_image_to_front` (LLaVA only does this for records with an image).
    For `plain`, the first turn is replaced by the bare `<image>` and the
    result is `"<image>" + caption + "\\n"` (LLaVA's `preprocess_plain`).
    """
    conv = get_template(template)
    if has_image:
        turns = [(src, move_image_to_front(value)) for src, value in turns]
    if conv.style == "plain":
        if len(turns) != 2:
            raise ValueError(f"the plain template needs exactly 2 turns, got {len(turns)}")
        return IMAGE_TOKEN + turns[1][1] + conv.sep
    return conv.render(training_messages(turns, conv))


def build_video_prompt(text: str, media: Optional[str]) -> str:
    """llava_v1 prompt: system, ' USER: ', `<video>\\n` (or `<image>\\n`) + text, ' ASSISTANT:'."""
    message = text if media is None else f"{MEDIA_PLACEHOLDER[media]}\n{text}"
    return f"{LLAVA_V1_SYSTEM} USER: {message} ASSISTANT:"

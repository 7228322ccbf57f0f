"""Conversation samples: a sample's json holding LLaVA ``conversations`` or chat ``messages``, read into one form.

LLaVA style: ``{"conversations": [{"from": "human", "value": "<image>\\nWhat is ..."}, {"from": "gpt", ...}]}``.
Chat-message style: ``{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}``. Both
become ``[{"role": "system" | "user" | "assistant", "content": str}]`` with exactly one ``<image>`` placeholder.
"""

from __future__ import annotations

from typing import Any

from ett_lightning.data.skips import SkipSample

IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
LAYOUTS = {"conversations": ("from", "value"), "messages": ("role", "content")}


def is_conversation(meta: dict[str, Any]) -> bool:
    return any(key in meta for key in LAYOUTS)


def read_messages(meta: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation of a sample's json as chat messages, the image placeholder placed (:func:`place_image`).

    Skips (with the reason) a conversation that is not a list of turns, has an unknown role or a non-text turn,
    is empty, has no assistant turn, or has more than one image placeholder.
    """
    layout = next(key for key in LAYOUTS if key in meta)
    role_key, content_key = LAYOUTS[layout]
    turns = meta[layout]
    if not isinstance(turns, list) or not all(isinstance(turn, dict) for turn in turns):
        raise SkipSample(f"{layout} is not a list of turns")
    messages = []
    for turn in turns:
        role, content = ROLES.get(str(turn.get(role_key))), turn.get(content_key)
        if role is None:
            raise SkipSample(f"unknown conversation role {turn.get(role_key)!r}")
        if not isinstance(content, str):
            raise SkipSample("a conversation turn without text")
        messages.append({"role": role, "content": content})
    if not any(m["content"].strip() for m in messages):
        raise SkipSample("empty conversation")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise SkipSample("conversation without an assistant turn")
    return place_image(messages)


def place_image(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Messages with exactly one ``<image>``: where the data put it, or (none given) at the start of the first user
    turn followed by a newline, as LLaVA's data has it. Two or more is a skip: one image per sample."""
    count = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    if count > 1:
        raise SkipSample("more than one <image> placeholder (one image per sample)")
    if count == 1:
        return messages
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
    if first_user is None:
        raise SkipSample("conversation without a user turn")
    placed = [dict(m) for m in messages]
    placed[first_user]["content"] = f"{IMAGE_PLACEHOLDER}\n{placed[first_user]['content']}"
    return placed


def last_assistant_answer(messages: list[dict[str, str]]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "assistant").strip()

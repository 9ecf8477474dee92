"""Counting things in English for people: ``counted(1, "action")`` is ``1 action``."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun``, the noun plural unless there is exactly one (``0 tasks``,
    ``1 task``, ``2 tasks``); ``plural`` for nouns that do not just take an ``s``."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {plural if plural is not None else noun + 's'}"

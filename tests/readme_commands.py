"""The commands the README shows, as tests read them: each fenced ``bash`` block's commands
(continuation lines joined, ``&&`` chains split, comments dropped) and the inline ones
(a code span starting with ``python``, ``tfds build`` or ``tensorboard``), in README order."""

from __future__ import annotations

import os
import re
import shlex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")

_FENCE = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"(?<!`)`((?:python3? |tfds build |tensorboard |PYTHONPATH=)[^`]*)`(?!`)")
_FENCE_ANY = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _split_chain(tokens: list[str]) -> list[list[str]]:
    commands, current = [], []
    for token in tokens:
        if token == "&&":
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in commands + [current] if c]


def commands(path: str = README) -> list[list[str]]:
    """Every README command as shell words (``shlex``), in the order the README shows them.

    Inline spans are read without their optional parts (``[--flag VALUE]``): the brackets
    are removed, the words kept.
    """
    with open(path) as f:
        text = f.read()
    found = []  # (offset, words)
    for block in _FENCE.finditer(text):
        joined = block.group(1).replace("\\\n", " ")
        for line in joined.splitlines():
            for words in _split_chain(shlex.split(line, comments=True)):
                found.append((block.start(), words))
    prose = _FENCE_ANY.sub(lambda m: " " * len(m.group(0)), text)
    for span in _INLINE.finditer(prose):
        spaced = span.group(1).replace("[", " ").replace("]", " ")
        for words in _split_chain(shlex.split(spaced)):
            found.append((span.start(), words))
    return [words for _, words in sorted(found, key=lambda item: item[0])]


def program(words: list[str]) -> str | None:
    """``python -m MODULE`` -> MODULE, ``python FILE.py`` -> FILE.py, ``tfds build`` ->
    'tfds build', else None; leading ``NAME=value`` environment words are skipped."""
    words = [w for w in words if not re.fullmatch(r"[A-Z_]+=\S*", w)] if words else words
    if len(words) >= 3 and words[0] in ("python", "python3") and words[1] == "-m":
        return words[2]
    if len(words) >= 2 and words[0] in ("python", "python3") and words[1].endswith(".py"):
        return words[1]
    if words[:2] == ["tfds", "build"]:
        return "tfds build"
    if words[:1] == ["tensorboard"]:
        return "tensorboard"
    return None


def flag_values(words: list[str]) -> dict[str, str | None]:
    """``--name value`` / ``--name=value`` / ``--name`` (then None) of a command's words."""
    values: dict[str, str | None] = {}
    for i, word in enumerate(words):
        if not word.startswith("--"):
            continue
        name, eq, value = word[2:].partition("=")
        if eq:
            values[name] = value
        elif i + 1 < len(words) and not words[i + 1].startswith("--"):
            values[name] = words[i + 1]
        else:
            values[name] = None
    return values


def find(prefix: str, path: str = README) -> list[list[str]]:
    """The README commands whose program is ``prefix`` (see ``program``)."""
    return [words for words in commands(path) if program(words) == prefix]

"""The one prompt builder and the one answer extractor of the TerraScope model path (no torch here).

``ask --backend terrascope``, ``bench eval`` and training all build the user turn with
:func:`user_text` -- the release's ``<think>/<answer>`` system text, ``<image>`` and the question, as
the official evaluation scripts send it -- and read the model's answer with :func:`answer_of` and, for
multiple-choice questions, :func:`extract_letter`. The chat template and the image blocks are added by
:func:`tscope.model.interleave.build_prompt`.
"""

from __future__ import annotations

import re

from tscope.model.config import SYSTEM_PROMPT

IMAGE = "<image>"

_ANSWER = re.compile(r"<answer>(.*?)(</answer>|$)", re.IGNORECASE | re.DOTALL)
_THINK = re.compile(r"<think>.*?(</think>|$)", re.IGNORECASE | re.DOTALL)
_SPECIAL = re.compile(r"<\|[^|]*\|>|<IMG_CONTEXT>|<REGION>")


def user_text(question: str, system_prompt: str = SYSTEM_PROMPT) -> str:
    """The user turn: the system text, ``<image>``, a newline and the question (options included)."""
    return f"{system_prompt}{IMAGE}\n{question}"


def choices_question(question: str, candidates: dict[str, str]) -> str:
    """A multiple-choice question as TerraScope-Bench words it: the question, then one ``L. option``
    line per candidate, sorted by letter."""
    return f"{question}\n" + "".join(f"{key}. {candidates[key]}\n" for key in sorted(candidates))


def strip_special(text: str) -> str:
    """``text`` without chat-template, image-context and region tokens (what a person should read)."""
    return _SPECIAL.sub("", text)


def answer_of(text: str) -> str:
    """The text inside the model's ``<answer>`` (to the end when it is not closed; empty when absent)."""
    match = _ANSWER.search(text)
    return strip_special(match.group(1) if match else "").strip()


def extract_letter(response: str, letters: str = "ABCD") -> tuple[str | None, str]:
    """(option letter or None, how it was found: ``answer-tag``, ``first-letter`` or ``none``).

    Inside ``<answer>`` a lower-case letter counts only when it is the whole answer ("b", "b.");
    elsewhere only upper-case letters count, so the article "a" in prose is never read as option A.
    """
    if not response:
        return None, "none"
    alone = re.compile(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])")
    if _ANSWER.search(response) and "</answer>" in response.lower():
        inner = answer_of(response)
        whole = re.fullmatch(r"\(?([A-Za-z])[\.\):]?", inner)
        if whole and whole.group(1).upper() in letters:
            return whole.group(1).upper(), "answer-tag"
        found = next((m.group(1) for m in alone.finditer(inner)), None)
        return (found, "answer-tag") if found else (None, "none")
    outside = _THINK.sub(" ", response)
    found = next((m.group(1) for m in alone.finditer(outside)), None)
    return (found, "first-letter") if found else (None, "none")

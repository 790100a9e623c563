"""The TerraScope-Bench prompt and answer-extraction protocol.

Prompt: exactly what the official ``evaluation/infer_terrascope_bench.py`` sends -- the TerraScope
system text, ``<image>\n``, the question and one ``L. option`` line per candidate (sorted by letter),
nothing more; the model's chat template and image blocks are added by the model code
(:func:`tscope.model.interleave.build_prompt`). Extraction: the option letter inside
``<answer>…</answer>`` if there is such a tag, else the first stand-alone option letter A-D of the
response outside ``<think>``; no letter is a wrong answer.
"""

from __future__ import annotations

import re

from tscope.model.config import SYSTEM_PROMPT as SYSTEM

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_THINK = re.compile(r"<think>.*?(</think>|$)", re.IGNORECASE | re.DOTALL)
_LETTER = re.compile(r"(?<![A-Za-z])([A-D])(?![A-Za-z])")


def format_prompt(question: str, candidates: dict[str, str]) -> str:
    """The full user turn for one sample (``<image>`` marks where the image tokens go)."""
    options = "".join(f"{key}. {candidates[key]}\n" for key in sorted(candidates))
    return f"{SYSTEM}<image>\n{question}\n{options}"


def extract_letter(response: str, letters: str = "ABCD") -> tuple[str | None, str]:
    """(option letter or None, how it was found: ``answer-tag``, ``first-letter`` or ``none``).

    Inside ``<answer>`` a lower-case letter counts only when it is the whole answer ("b", "b.");
    elsewhere only upper-case letters count, so the article "a" in prose is never read as option A.
    """
    if not response:
        return None, "none"
    tag = _ANSWER.search(response)
    if tag:
        inner = tag.group(1).strip()
        whole = re.fullmatch(r"\(?([A-Da-d])[\.\):]?", inner)
        if whole and whole.group(1).upper() in letters:
            return whole.group(1).upper(), "answer-tag"
        found = next((m.group(1) for m in _LETTER.finditer(inner) if m.group(1) in letters), None)
        if found:
            return found, "answer-tag"
        return None, "none"
    outside = _THINK.sub(" ", response)
    found = next((m.group(1) for m in _LETTER.finditer(outside) if m.group(1) in letters), None)
    return (found, "first-letter") if found else (None, "none")

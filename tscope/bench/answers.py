"""The TerraScope-Bench prompt and answer-extraction protocol.

Prompt: exactly what the official ``evaluation/infer_terrascope_bench.py`` sends -- the TerraScope
system text, ``<image>\n``, the question and one ``L. option`` line per candidate (sorted by letter),
nothing more; the model's chat template and image blocks are added by the model code
(:func:`tscope.model.interleave.build_prompt`). Extraction: the option letter inside
``<answer>…</answer>`` if there is such a tag, else the first stand-alone option letter A-D of the
response outside ``<think>``; no letter is a wrong answer.
"""

from __future__ import annotations

from tscope.model.config import SYSTEM_PROMPT as SYSTEM
from tscope.model.prompt import choices_question, extract_letter, user_text

__all__ = ["SYSTEM", "extract_letter", "format_prompt"]


def format_prompt(question: str, candidates: dict[str, str]) -> str:
    """The full user turn for one sample (``<image>`` marks where the image tokens go)."""
    return user_text(choices_question(question, candidates), SYSTEM)

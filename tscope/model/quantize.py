"""bitsandbytes quantisation of the language model only.

The vision tower, projector, SAM-2 and seg head stay in bf16 (or the chosen dtype). In transformers 5
``llm_int8_skip_modules`` matches module names *from the start* (``"vision_tower"`` does not skip
``model.vision_tower``) and an explicit list replaces the default ``lm_head`` skip, so the list names
the full paths inside ``InternVLForConditionalGeneration``; :func:`verify_skips` checks the loaded
model really has no quantised layer outside the language model.
"""

from __future__ import annotations

QUANT_CHOICES = ("none", "8bit", "4bit")
SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]


def quantization_config(quant: str, compute_dtype):
    """A ``BitsAndBytesConfig`` for ``quant`` (``8bit`` or ``4bit`` nf4), or None for ``none``."""
    if quant == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(SKIP_MODULES))
    if quant == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=list(SKIP_MODULES))
    raise ValueError(f"--quant must be one of {', '.join(QUANT_CHOICES)}")


def quantized_modules(module) -> list[str]:
    """Names of bitsandbytes layers inside ``module``."""
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return [name for name, sub in module.named_modules() if isinstance(sub, kinds)]


def verify_skips(internvl) -> dict[str, int]:
    """Check only the language model is quantised; returns counts per part. Raises RuntimeError otherwise."""
    names = quantized_modules(internvl)
    outside = [n for n in names if not n.startswith("model.language_model.")]
    if outside:
        raise RuntimeError(f"quantisation reached modules that must stay unquantised: {', '.join(outside[:5])}")
    if not names:
        raise RuntimeError("no language-model layer was quantised")
    return {"language_model": len(names), "vision_tower": 0, "projector": 0, "lm_head": 0}

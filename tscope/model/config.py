"""Configuration objects of the TerraScope model (transformers-style: plain data, saved as JSON).

``TerraScopeConfig`` holds the two native transformers configs it is built from (an
``InternVLConfig`` for the vision tower + projector + Qwen2 language model, a ``Sam2Config`` for the
grounding model) as dicts, plus what TerraScope adds on top: the seg head, the region-token rule,
the segmentation loss weights, prompt text and special-token names. Defaults reproduce the released
checkpoint's behaviour; the paper's variants are one field away (see ``docs/model.md``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# The instruction the released model was trained with: it goes before the first image of the user
# turn (it is part of the model's input format, so it is reproduced as data, like a chat template).
SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in their mind and then provides the user a "
    "concise final answer in a short word or phrase. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process here "
    "</think><answer> answer here </answer>\n\n"
)

NATIVE_FORMAT = "tscope-terrascope"
NATIVE_CONFIG = "terrascope.json"


@dataclass
class TokenNames:
    """Special tokens by *name*; ids are always resolved through the tokenizer, never hard-coded."""

    seg: str = "[SEG]"
    region: str = "<REGION>"
    image_context: str = "<IMG_CONTEXT>"
    image_start: str = "<img>"
    image_end: str = "</img>"
    think_start: str = "<think>"
    think_end: str = "</think>"
    answer_start: str = "<answer>"
    answer_end: str = "</answer>"
    im_start: str = "<|im_start|>"
    im_end: str = "<|im_end|>"
    stop: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")


@dataclass
class RegionConfig:
    """How a [SEG] mask becomes region tokens fed back into generation.

    * ``rule="nearest"`` (release): the mask is nearest-resized onto the visual-token grid;
      ``rule="coverage"`` (paper): a token is selected when the mask covers more than
      ``coverage_threshold`` of its pixels.
    * ``max_tokens``: cap per mask (release 8, paper 128); above it tokens are sampled uniformly over
      the selection's extent (``sampling="uniform"``) or the first ones in raster order (``"first"``).
    """

    rule: str = "nearest"
    coverage_threshold: float = 0.5
    max_tokens: int = 8
    sampling: str = "uniform"


@dataclass
class TerraScopeConfig:
    """Everything needed to build :class:`~tscope.model.architecture.TerraScopeModel`.

    ``internvl`` / ``sam2`` are ``to_dict()`` forms of transformers' ``InternVLConfig`` /
    ``Sam2Config``. ``image_size`` is the InternVL tile side (448 for the release),
    ``sam_image_size`` the square side SAM-2 sees (1024).
    """

    internvl: dict[str, Any]
    sam2: dict[str, Any]
    image_size: int = 448
    max_tiles: int = 12
    use_thumbnail: bool = True
    sam_image_size: int = 1024
    sam_norm_bf16: bool = True
    max_new_tokens: int = 512
    system_prompt: str = SYSTEM_PROMPT
    template: str = "qwen_chat"
    tokens: TokenNames = field(default_factory=TokenNames)
    region: RegionConfig = field(default_factory=RegionConfig)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tokens"]["stop"] = list(self.tokens.stop)
        return {"format": NATIVE_FORMAT, **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TerraScopeConfig:
        data = {k: v for k, v in data.items() if k != "format"}
        tokens = dict(data.pop("tokens", {}))
        if "stop" in tokens:
            tokens["stop"] = tuple(tokens["stop"])
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(data) - known)
        if extra:
            raise ValueError(f"unknown TerraScope config fields: {', '.join(extra)}")
        return cls(
            **{k: v for k, v in data.items() if k != "region"},
            tokens=TokenNames(**tokens),
            region=RegionConfig(**data.get("region", {})),
        )

    # --- derived shapes ----------------------------------------------------------------------

    @property
    def tokens_per_side(self) -> int:
        """Visual tokens along one side of a tile: (image_size / patch) x downsample_ratio."""
        patch = self.internvl["vision_config"]["patch_size"]
        patch = patch[0] if isinstance(patch, list | tuple) else patch
        return int(self.image_size // patch * self.internvl.get("downsample_ratio", 0.5))

    def internvl_config(self):
        from transformers import InternVLConfig

        return InternVLConfig(**self.internvl)

    def sam2_config(self):
        from transformers import Sam2Config

        return Sam2Config(**self.sam2)

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
    """Special tokens by *name*; ids are resolved through the tokenizer.

    Generation stops on the tokenizer's ``eos_token`` (``<|im_end|>`` for the release) and, as the
    official loops do, on the ids in ``release_stop_single`` (one image) / ``release_stop_pair`` (two or
    more images). The official code hard-codes those ids; they are kept as ids because the released
    language model can emit an id its tokenizer has no name for, and :func:`stop_ids` names the ones the
    tokenizer knows. Ids beyond a checkpoint's vocabulary can never be generated and are ignored.
    """

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
    release_stop_single: tuple[int, ...] = (151682,)
    release_stop_pair: tuple[int, ...] = (151682, 151684)


@dataclass
class RegionConfig:
    """How a ``[SEG]`` mask becomes the region tokens fed back into generation.

    * ``rule="release"`` (default, the released inference code): the mask is resized with PIL NEAREST
      to the tiled image size and then to the token grid; a token is selected where the resized mask is
      set. ``rule="coverage"`` (the paper): a token is selected when the mask covers more than
      ``coverage_threshold`` of the image pixels under it.
    * ``max_tokens``: cap per mask (release 8, paper 128). Above it the release's spatially uniform
      sampling keeps one token per cell of a ceil(sqrt(cap))^2 grid over the mask's bounding box, in
      cell order. No selected token falls back to token 0, as in the release.
    """

    rule: str = "release"
    coverage_threshold: float = 0.5
    max_tokens: int = 8

    def __post_init__(self):
        if self.rule not in ("release", "coverage"):
            raise ValueError(f"unknown region rule {self.rule!r}; use 'release' or 'coverage'")
        if self.max_tokens < 1:
            raise ValueError(f"region max_tokens must be at least 1, got {self.max_tokens}")


PAPER_REGION = RegionConfig(rule="coverage", coverage_threshold=0.5, max_tokens=128)


@dataclass
class TerraScopeConfig:
    """Everything needed to build :class:`~tscope.model.architecture.TerraScopeModel`.

    ``internvl`` / ``sam2`` are ``to_dict()`` forms of transformers' ``InternVLConfig`` /
    ``Sam2Config``. ``image_size`` is the InternVL tile side (448 for the release),
    ``sam_image_size`` the square side SAM-2 sees (1024). Generation (as the official loops):
    ``max_new_tokens`` counts every generated id including region tokens (release 8192), ``max_segs``
    ends generation after that many ``[SEG]`` (release 20). ``frame_rule`` picks the image a ``[SEG]``
    of a multi-image prompt refers to: ``alternate`` (release: the k-th [SEG] goes to image k mod n) or
    ``text`` (tscope's reading of the paper: the last "Image: t<i>" written before the [SEG]).
    """

    internvl: dict[str, Any]
    sam2: dict[str, Any]
    image_size: int = 448
    max_tiles: int = 12
    use_thumbnail: bool = True
    sam_image_size: int = 1024
    sam_norm_bf16: bool = True
    max_new_tokens: int = 8192
    max_segs: int = 20
    frame_rule: str = "alternate"
    system_prompt: str = SYSTEM_PROMPT
    template: str = "qwen_chat"
    tokens: TokenNames = field(default_factory=TokenNames)
    region: RegionConfig = field(default_factory=RegionConfig)

    def __post_init__(self):
        if self.frame_rule not in ("alternate", "text"):
            raise ValueError(f"unknown frame rule {self.frame_rule!r}; use 'alternate' or 'text'")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("release_stop_single", "release_stop_pair"):
            out["tokens"][key] = list(out["tokens"][key])
        return {"format": NATIVE_FORMAT, **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TerraScopeConfig:
        data = {k: v for k, v in data.items() if k != "format"}
        tokens = dict(data.pop("tokens", {}))
        region = dict(data.pop("region", {}))
        # Files written before release fidelity: stop names became the eos token + the release's stop ids,
        # the "nearest" rule became the release's rule (which also fixes its sampling).
        tokens.pop("stop", None)
        region.pop("sampling", None)
        if region.get("rule") == "nearest":
            region["rule"] = "release"
        for key in ("release_stop_single", "release_stop_pair"):
            if key in tokens:
                tokens[key] = tuple(int(i) for i in tokens[key])
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(data) - known)
        if extra:
            raise ValueError(f"unknown TerraScope config fields: {', '.join(extra)}")
        return cls(**data, tokens=TokenNames(**tokens), region=RegionConfig(**region))

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

"""Training recipes: plain dataclasses loaded from YAML (``train/stage1.yaml``, ``train/stage2.yaml``).

Defaults are what produced the released checkpoint (``projects/terrascope/configs/terrascope_8b.py``):
AdamW (weight decay 0.05, betas 0.9/0.999), lr 4e-5, linear warmup over 5% of the steps from
lr x 1e-5 then cosine to 0, 1 epoch, clip 1, bf16, 2 samples per device x 4 accumulation, LoRA r 128 /
alpha 256 / dropout 0.05, and the mask loss BCE x 2 + Dice x 0.5 on 12544 uncertainty-sampled points of
the candidate with the best *predicted* IoU. The paper's Table B values (global batch 32, warmup 0.3,
Adam, weight decay 0) are the ``train/stage*-paper.yaml`` recipes. Relative paths in a recipe are
resolved against the recipe file's folder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tscope.errors import InputError

STAGES = (1, 2)
PRECISIONS = ("bf16", "fp16", "fp32")
OPTIMIZERS = ("adam", "adamw")
CANDIDATES = ("predicted", "closest")
RESOLUTIONS = ("low", "image")
SCHEDULERS = ("cosine", "linear", "constant")
_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}


def _check_types(recipe: Any, where: str = "") -> None:
    """Check (and where harmless, coerce) each scalar field of a recipe dataclass against its annotation.

    YAML hands over whatever the file says; ``lr: 4e-5`` is even a *string* to PyYAML (its floats
    need a dot), so numbers written as strings are accepted for float fields.
    """
    for f in fields(recipe):
        value = getattr(recipe, f.name)
        kinds = [k.strip() for k in str(f.type).split("|")]  # annotations are strings (postponed)
        if value is None and "None" in kinds:
            continue
        expected = _SCALARS.get(kinds[0])
        if expected is None:
            continue  # containers and nested recipes are checked where they are used
        if expected is float and not isinstance(value, bool):
            if isinstance(value, int | float):
                setattr(recipe, f.name, float(value))
                continue
            if isinstance(value, str):
                try:
                    setattr(recipe, f.name, float(value))
                    continue
                except ValueError:
                    pass
        elif isinstance(value, expected) and (expected is bool or not isinstance(value, bool)):
            continue
        raise InputError(f"training config: {where}{f.name} must be {kinds[0]}, got {value!r}")


# Every linear layer of a Qwen2 decoder block: the release wraps all LLM linears but lm_head.
QWEN2_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraRecipe:
    """peft LoRA on the language model's linear layers (stage 2). Release: r=128, alpha=256, dropout 0.05."""

    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(QWEN2_LINEARS))

    def __post_init__(self) -> None:
        _check_types(self, "lora.")
        if not isinstance(self.target_modules, list) or not all(isinstance(m, str) for m in self.target_modules):
            raise InputError(
                f"training config: lora.target_modules must be a list of names, got {self.target_modules!r}")


@dataclass
class LossRecipe:
    """loss = lm_weight x LM cross-entropy + bce_weight x BCE + dice_weight x Dice (per [SEG] mask)
    + iou_weight x MSE of SAM-2's IoU head (:func:`tscope.train.losses.candidate_seg_loss`).

    Defaults are the release's: BCE x 2 + Dice x 0.5 on the candidate with the best predicted IoU (the
    one SAM-2's multimask output keeps), at SAM-2's low-res mask grid with the ground truth resized to it
    (nearest), on ``points`` = 12544 points (3x oversampled, 75% most uncertain), IoU head untrained.
    tscope's alternative: ``candidate: closest`` (the candidate nearest the ground truth),
    ``iou_weight: 1`` (train the IoU head that picks the mask at inference), ``points: 0`` (dense),
    ``resolution: image`` (logits upsampled to the image as inference makes them).
    """

    lm_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    iou_weight: float = 0.0
    candidate: str = "predicted"
    points: int = 12544
    oversample_ratio: float = 3.0
    importance_ratio: float = 0.75
    resolution: str = "low"

    def __post_init__(self) -> None:
        _check_types(self, "loss.")
        if self.candidate not in CANDIDATES:
            raise InputError(f"loss.candidate must be one of {', '.join(CANDIDATES)}, got {self.candidate!r}")
        if self.resolution not in RESOLUTIONS:
            raise InputError(f"loss.resolution must be one of {', '.join(RESOLUTIONS)}, got {self.resolution!r}")
        if self.points < 0 or self.oversample_ratio < 1 or not 0 <= self.importance_ratio <= 1:
            raise InputError("loss.points must be >= 0 (0: dense), loss.oversample_ratio >= 1 and "
                             "loss.importance_ratio in [0, 1]")
        if min(self.lm_weight, self.bce_weight, self.dice_weight, self.iou_weight) < 0:
            raise InputError("loss weights must be >= 0")


@dataclass
class TrainConfig:
    """One stage's recipe. Samples per optimizer step: ``device_batch`` x ``grad_accumulation`` per process
    (the release's ``batch_size`` 2 per device and ``accumulative_counts`` 4), or, when ``batch_size`` is
    set, that many in all (global, split across processes; the paper's Table B states 32). Each process
    forwards one sample at a time and accumulates gradients over its share of the step."""

    stage: int
    model: str
    data: str
    out: str = "runs/train"
    image_root: str | None = None
    eval_data: str | None = None
    eval_fraction: float = 0.0
    eval_every: int = 0
    eval_limit: int = 64
    eval_max_new_tokens: int = 256
    batch_size: int | None = None
    device_batch: int = 2
    grad_accumulation: int = 4
    lr: float = 4e-5
    scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    warmup_start_factor: float = 1e-5
    min_lr: float = 0.0
    epochs: int = 1
    max_steps: int | None = None
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.05
    max_grad_norm: float = 1.0
    precision: str = "bf16"
    device: str = "auto"
    seed: int = 0
    save_every: int = 500
    save_total_limit: int = 2
    max_length: int = 8192
    train_embeddings: bool = False
    gradient_checkpointing: bool = True
    lora: LoraRecipe = field(default_factory=LoraRecipe)
    loss: LossRecipe = field(default_factory=LossRecipe)

    def __post_init__(self) -> None:
        _check_types(self)
        if self.stage not in STAGES:
            raise InputError(f"stage must be 1 or 2, got {self.stage!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.scheduler not in SCHEDULERS:
            raise InputError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if (self.batch_size is not None and self.batch_size < 1) or self.device_batch < 1 \
                or self.grad_accumulation < 1 or self.epochs < 1 or self.lr <= 0:
            raise InputError("batch_size, device_batch, grad_accumulation and epochs must be >= 1 and lr > 0")
        if self.weight_decay < 0:
            raise InputError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.eval_fraction < 1:
            raise InputError("warmup_ratio and eval_fraction must be in [0, 1)")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(f"max_steps must be >= 1, got {self.max_steps}")
        try:
            beta1, beta2 = (float(b) for b in self.betas)
        except (TypeError, ValueError):
            raise InputError(f"training config: betas must be two numbers, got {self.betas!r}") from None
        self.betas = (beta1, beta2)

    def global_batch(self, processes: int) -> int:
        """Samples per optimizer step over all ``processes``."""
        if self.batch_size is not None:
            return self.batch_size
        return self.device_batch * self.grad_accumulation * processes

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["betas"] = list(self.betas)
        if self.batch_size is not None:  # the global batch replaces the per-process one
            del out["device_batch"], out["grad_accumulation"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path | None = None) -> TrainConfig:
        data = dict(data)
        known = {f.name for f in fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise InputError(f"unknown training config keys: {', '.join(extra)}")
        missing = [k for k in ("stage", "model", "data") if data.get(k) in (None, "")]
        per_device = sorted({"device_batch", "grad_accumulation"} & {k for k, v in data.items() if v is not None})
        if data.get("batch_size") is not None and per_device:
            # Two ways of saying the batch: refuse rather than silently ignore one of them.
            raise InputError(f"training config: batch_size (global) and {', '.join(per_device)} (per process) "
                             "both set; keep one")
        if missing:
            raise InputError(f"training config needs {', '.join(missing)}")
        try:
            lora = LoraRecipe(**(data.pop("lora", None) or {}))
            loss = LossRecipe(**(data.pop("loss", None) or {}))
        except TypeError as exc:
            raise InputError(f"training config: {exc}") from None
        if base is not None:
            for key in ("model", "data", "out", "image_root", "eval_data"):
                if data.get(key):
                    p = Path(str(data[key])).expanduser()
                    data[key] = str(p if p.is_absolute() else (base / p))
        return cls(**data, lora=lora, loss=loss)


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a YAML recipe; ``overrides`` (None values ignored) replace its top-level keys."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"--config {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"--config {path}: the top level must be a mapping")
    # Command-line paths are relative to the working directory, recipe paths to the recipe.
    for key, value in overrides.items():
        if value is not None:
            data[key] = str(Path(value).resolve()) if key in ("out", "model", "data") else value
    return TrainConfig.from_dict(data, base=path.resolve().parent)

"""Which parameters train in each stage (TerraScope's two-stage recipe).

* Stage 1 (grounded pretraining): only SAM-2's mask decoder and the seg head; the vision tower,
  projector, language model and SAM-2's image and prompt encoders are frozen.
* Stage 2 (instruction tuning): LoRA adapters (peft) on the language model's linear layers, the
  projector, the mask decoder and the seg head; the vision tower and the rest of SAM-2 stay frozen.
  ``train_embeddings`` also trains the token embeddings and ``lm_head`` (the release does so for its
  added special tokens, as Sa2VA does whenever the LLM has LoRA; on in train/stage2.yaml).
"""

from __future__ import annotations

from torch import nn

from tscope.train.config import LoraRecipe

STAGE1 = ("sam2.mask_decoder.", "seg_head.")
STAGE2 = ("internvl.model.multi_modal_projector.", "sam2.mask_decoder.", "seg_head.")
EMBEDDINGS = ("internvl.model.language_model.embed_tokens.", "internvl.lm_head.")


def add_lora(model: nn.Module, lora: LoraRecipe) -> int:
    """Inject LoRA adapters into ``model.language_model`` in place; returns how many layers got one."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                        target_modules=list(lora.target_modules))
    inject_adapter_in_model(config, model.language_model)
    wrapped = sum(isinstance(m, LoraLayer) for m in model.language_model.modules())
    if not wrapped:
        raise ValueError(f"no LoRA target among the language model's modules: {lora.target_modules}")
    return wrapped


def apply_stage(model: nn.Module, stage: int, lora: LoraRecipe | None = None,
                train_embeddings: bool = False) -> list[str]:
    """Freeze everything, then unfreeze the stage's parts (adding LoRA for stage 2); returns trainable names."""
    if stage == 2:
        add_lora(model, lora or LoraRecipe())
    prefixes = STAGE1 if stage == 1 else STAGE2 + (EMBEDDINGS if train_embeddings else ())
    names = []
    for name, param in model.named_parameters():
        train = name.startswith(prefixes) or (stage == 2 and "lora_" in name)
        param.requires_grad_(train)
        if train:
            names.append(name)
    if not names:
        raise ValueError(f"stage {stage}: no parameter to train")
    return names


def merged_linears(model: nn.Module) -> dict[str, nn.Module]:
    """{qualified name: plain nn.Linear with the LoRA update merged in} for every LoRA layer of the model.

    The training model is left untouched (base weights stay exact, so a resumed run matches an
    uninterrupted one); the merged copies live on the CPU.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        with torch.no_grad():
            weight = base.weight.detach().float().cpu().clone()  # never add into the live base weight
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight += module.get_delta_weight(adapter).detach().float().cpu()
            linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                               dtype=base.weight.dtype, device="cpu")
            linear.weight.copy_(weight.to(base.weight.dtype))
            if base.bias is not None:
                linear.bias.copy_(base.bias.detach().cpu())
        out[name] = linear
    return out


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()`` except the frozen encoders (vision tower, SAM-2 image encoder), which stay in eval
    mode so their dropout / drop-path never randomises the features the trained parts see."""
    model.train()
    model.vision_tower.eval()
    model.sam2.vision_encoder.eval()
    return model

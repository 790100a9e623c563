"""Tiny random TerraScope checkpoints for tests (no downloads): tokenizer, configs, weights.

``write_released(dir)`` writes the *released* layout (config.json with model_type sa2va_chat,
official state-dict keys in safetensors, tokenizer with the special tokens); ``write_native(dir)``
the tscope layout. Shapes follow NOTES.md's tiny InternVL; SAM-2 is a small Hiera that still has
the real module structure.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "[SEG]", "<REGION>",
            "<think>", "</think>", "<answer>", "</answer>", "<p>", "</p>"]
VOCAB = 288
TEXT_HIDDEN = 64
SAM_HIDDEN = 32


def build_tokenizer():
    """A byte-level BPE (256 byte tokens, no merges) with Qwen's chat and TerraScope's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_map = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_map))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIALS})
    return fast


def internvl_config(image_token_id: int) -> dict:
    return {
        "vision_config": {"model_type": "internvl_vision", "hidden_size": 32, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "intermediate_size": 64, "image_size": [64, 64],
                          "patch_size": [16, 16], "attention_bias": True},
        "text_config": {"model_type": "qwen2", "vocab_size": VOCAB, "hidden_size": TEXT_HIDDEN,
                        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                        "intermediate_size": 128, "max_position_embeddings": 4096, "tie_word_embeddings": False},
        "image_token_id": image_token_id, "downsample_ratio": 0.5, "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu",
        "tie_word_embeddings": False,
    }


def sam2_config() -> dict:
    backbone = {"model_type": "sam2_hiera_det_model", "hidden_size": 16, "blocks_per_stage": [1, 1, 2, 1],
                "embed_dim_per_stage": [16, 32, 64, 128],
                "num_attention_heads_per_stage": [1, 1, 2, 2], "global_attention_blocks": [3],
                "window_size_per_stage": [4, 2, 2, 2], "window_positional_embedding_background_size": [4, 4],
                "image_size": [128, 128]}
    return {
        "vision_config": {"backbone_config": backbone, "backbone_channel_list": [128, 64, 32, 16],
                          "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]], "fpn_hidden_size": SAM_HIDDEN},
        "prompt_encoder_config": {"hidden_size": SAM_HIDDEN, "image_size": 128, "patch_size": 16},
        "mask_decoder_config": {"hidden_size": SAM_HIDDEN, "mlp_dim": 64, "num_attention_heads": 2,
                                "iou_head_hidden_dim": SAM_HIDDEN},
    }


def build_model(seed: int = 0, seg_bias: float = 2.0, max_new_tokens: int = 24):
    """(TerraScopeModel, tokenizer) with random weights; ``[SEG]``'s output row is pushed towards the
    mean hidden direction so greedy decoding emits it now and then (random weights alone rarely do)."""
    import torch

    from tscope.model.architecture import TerraScopeModel
    from tscope.model.config import TerraScopeConfig

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = TerraScopeConfig(internvl=internvl_config(tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")),
                              sam2=sam2_config(), image_size=64, max_tiles=4, sam_image_size=128,
                              max_new_tokens=max_new_tokens)
    model = TerraScopeModel(config).eval()
    with torch.no_grad():
        # A tiny random model's next token depends mostly on the current one, and greedy decoding
        # settles on a fixed point. Calibrate [SEG]'s output row on the hidden state after a newline
        # (the end of the assistant header), so [SEG] wins there and then whenever decoding returns to it.
        ids = torch.tensor([tokenizer.encode("<|im_start|>assistant\n")])
        hidden, logits, _ = model.lm(model.embed(ids))
        last = hidden[0, -1]
        head = model.internvl.lm_head.weight
        head[tokenizer.convert_tokens_to_ids("[SEG]")] = last / last.norm() ** 2 * logits[0, -1].max() * (1 + seg_bias)
        for name in ("<|im_end|>", "<|endoftext|>"):
            head[tokenizer.convert_tokens_to_ids(name)] = -last / last.norm() * head.norm(dim=1).max()
    return model, tokenizer


def write_native(path: Path, **kwargs) -> Path:
    from tscope.model.loading import save_terrascope

    model, tokenizer = build_model(**kwargs)
    return save_terrascope(model, tokenizer, path)


def write_released(path: Path, **kwargs) -> Path:
    """The released layout: official keys (remapped from the tiny model), config.json, tokenizer."""
    from safetensors.torch import save_file

    from tscope.model.keys import native_to_official

    model, tokenizer = build_model(**kwargs)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in native_to_official(model.state_dict()).items()}
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, str(path / name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: n for n, names in shards.items() for k in names}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    cfg = model.config.internvl
    vision = dict(cfg["vision_config"])
    vision.pop("model_type")
    vision.update(qkv_bias=vision.pop("attention_bias"), qk_normalization=False, image_size=64, patch_size=16)
    config = {
        "model_type": "sa2va_chat", "architectures": ["Sa2VAChatModel"], "template": "qwen_chat",
        "force_image_size": 64, "downsample_ratio": 0.5, "ps_version": "v2", "dynamic_image_size": True,
        "use_thumbnail": True, "select_layer": -1, "max_dynamic_patch": 4,
        # rope_theta as the release has it (Qwen2.5's 1e6, not transformers' default 1e4).
        "llm_config": {**cfg["text_config"], "architectures": ["Qwen2ForCausalLM"], "rope_theta": 1000000.0},
        "vision_config": {**vision, "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b"},
        "sam2_config": model.config.sam2,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(str(path))
    return path


def script_model(monkeypatch, scripted) -> None:
    """Replace the model's generation everywhere with ``scripted`` (``interleave.generate``'s signature):
    the single-prompt loop, and the batched decoder, whose requests it answers one by one."""
    import tscope.model.interleave as interleave
    from tscope.model.batched import BatchDecoder

    def run(self, source=()):
        pending = iter(source)
        while (request := self.queue.popleft() if self.queue else next(pending, None)) is not None:
            request.result = scripted(self.model, self.tokenizer, request.images, request.text,
                                      request.max_new_tokens, sar=request.sar, prepared=request.prepared,
                                      override=request.override)
            if request.done is not None:
                request.done(request, request.result)

    monkeypatch.setattr(interleave, "generate", scripted)
    monkeypatch.setattr(BatchDecoder, "run", run)

"""TerraScope latency: real-size InternVL3-8B + SAM-2 Hiera-L with random weights (or --tiny on CPU).

Prints, per quantisation (bf16 / 8-bit / 4-bit): seconds per sample at a fixed number of generated
tokens with a fixed number of [SEG] (forced at evenly spaced steps, so the SAM-2 + region-token path
runs exactly as often as asked), SAM-2 encodes per sample, peak GPU memory and tiles/s in scene mode
(one 448-px tile = one sample), beside the paper's 2.48 s and 22.4 GB (A100).

    python benchmarks/model_latency.py                 # GPU, real size, bf16 8bit 4bit
    python benchmarks/model_latency.py --tiny --quant none   # CPU smoke run (the test suite runs this)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PAPER = {"s/sample": 2.48, "peak GB": 22.4}


def real_size_checkpoint(path: Path) -> Path:
    """InternVL3-8B (InternViT-300M + Qwen2.5-7B) + SAM-2 Hiera-L, random weights, native layout, bf16."""
    import torch
    from tiny_terrascope import SPECIALS, build_tokenizer  # the byte-level tokenizer; the vocab size is real

    from tscope.model.architecture import TerraScopeModel
    from tscope.model.config import TerraScopeConfig
    from tscope.model.loading import hiera_large_sam2, save_terrascope

    tokenizer = build_tokenizer()
    assert all(tokenizer.convert_tokens_to_ids(s) is not None for s in SPECIALS)
    internvl = {
        "vision_config": {"model_type": "internvl_vision", "hidden_size": 1024, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "intermediate_size": 4096, "image_size": [448, 448],
                          "patch_size": [14, 14], "attention_bias": True},
        "text_config": {"model_type": "qwen2", "vocab_size": 151674, "hidden_size": 3584, "num_hidden_layers": 28,
                        "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944,
                        "max_position_embeddings": 32768, "tie_word_embeddings": False, "rope_theta": 1e6},
        "image_token_id": tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), "downsample_ratio": 0.5,
        "vision_feature_layer": -1, "vision_feature_select_strategy": "default", "tie_word_embeddings": False,
    }
    config = TerraScopeConfig(internvl=internvl, sam2=hiera_large_sam2(), max_tiles=1)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = TerraScopeModel(config)
    torch.set_default_dtype(torch.float32)
    return save_terrascope(model, tokenizer, path)


def run(path: Path, quant: str, dtype: str, device: str, new_tokens: int, segs: int, samples: int) -> dict:
    import torch

    from tscope.model import generate, user_text
    from tscope.model.loading import load_terrascope

    loaded = load_terrascope(path, dtype=dtype, device=device, quant=quant)
    model, tok = loaded.model, loaded.tokenizer
    seg_id = tok.convert_tokens_to_ids(model.config.tokens.seg)
    seg_steps = {int(round((k + 1) * new_tokens / (segs + 1))) for k in range(segs)}
    side = model.config.image_size
    image = (np.random.default_rng(0).random((side, side, 3)) * 255).astype(np.uint8)
    plain = next(i for i in range(256) if i not in tok.all_special_ids)

    def override(step: int, greedy: int) -> int:
        # Fixed budget: [SEG] at the chosen steps, an ordinary token elsewhere, eos as the last token.
        if step == new_tokens - 1:
            return tok.eos_token_id
        return seg_id if step in seg_steps else plain

    text = user_text("What percentage of the image is water?", model.config.system_prompt)
    limit = new_tokens + segs * model.config.region.max_tokens  # region tokens count towards the limit

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times, encodes = [], []
    for _ in range(samples + 1):  # the first run warms up
        model.sam_encodes = 0
        t0 = time.perf_counter()
        out = generate(model, tok, [image], text, limit, override=override)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        encodes.append(model.sam_encodes)
        assert len(out.masks) == segs and len(out.token_ids) == new_tokens, (len(out.masks), len(out.token_ids))
    per = float(np.mean(times[1:]))
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else float("nan")
    return {"quant": quant, "s/sample": per, "sam2 encodes/sample": float(np.mean(encodes[1:])), "peak GB": peak,
            "tiles/s": 1.0 / per}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random model on CPU (tests the script)")
    parser.add_argument("--quant", default="none,8bit,4bit", help="comma list of none, 8bit, 4bit")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--segs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--model", type=Path, help="use this checkpoint instead of building one")
    args = parser.parse_args()
    import torch

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = "fp32" if args.tiny else "bf16"
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            path = args.model
        elif args.tiny:
            from tiny_terrascope import write_native

            path = write_native(Path(tmp) / "tiny")
        else:
            path = real_size_checkpoint(Path(tmp) / "real")
        rows = [run(path, q, dtype, device, args.new_tokens, args.segs, args.samples) for q in args.quant.split(",")]
    size = "tiny" if args.tiny else "InternVL3-8B + SAM-2 Hiera-L"
    device_name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"# {size}, random weights, {device_name}, {args.new_tokens} new tokens, {args.segs} [SEG], greedy")
    print("| quant | s/sample | SAM-2 encodes/sample | peak GPU GB | tiles/s (scene mode) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['quant']} | {r['s/sample']:.3f} | {r['sam2 encodes/sample']:.0f} | {r['peak GB']:.1f} |"
              f" {r['tiles/s']:.2f} |")
    print(f"| paper (A100, bf16) | {PAPER['s/sample']} | - | {PAPER['peak GB']} | - |")


if __name__ == "__main__":
    main()

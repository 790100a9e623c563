"""TerraScope latency and throughput: real-size InternVL3-8B + SAM-2 Hiera-L with random weights on a GPU
(bf16 / 8-bit / 4-bit), and the tiny test model on CPU.

Every sample is one 448-px scene tile (the tiny model: one 64-px tile) answered with a fixed budget:
``--new-tokens`` generated tokens with ``--segs`` [SEG] (forced at evenly spaced steps, shifted per tile
so sequences of a batch take their region steps at different times; eos last), so the SAM-2 and
region-token path runs exactly as often as asked. Per row it prints:

* s/sample at batch 1 with the single-prompt loop (``tscope.model.interleave.generate``), beside the
  paper's 2.48 s (A100, bf16);
* tiles/s with the batched decoder (``tscope.model.batched``) at each ``--batches`` size, over
  ``--tiles-per-slot`` x batch tiles (continuous batching: tiles join as others finish);
* SAM-2 encodes per sample, and peak memory (GPU: allocated by torch, beside the paper's 22.4 GB; CPU:
  the process's peak resident set).

    python benchmarks/model_latency.py            # the whole table: tiny on CPU, then bf16 8bit 4bit on the GPU
    python benchmarks/model_latency.py --tiny     # only the tiny row (CPU)
"""

from __future__ import annotations

import argparse
import resource
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


class Budget:
    """The forced schedule of tile ``j``: [SEG] at ``segs`` evenly spaced steps (shifted by j), eos last."""

    def __init__(self, tokenizer, seg_id: int, new_tokens: int, segs: int):
        self.eos, self.seg, self.new_tokens = tokenizer.eos_token_id, seg_id, new_tokens
        self.plain = next(i for i in range(256) if i not in tokenizer.all_special_ids)
        self.steps = [int(round((k + 1) * new_tokens / (segs + 1))) for k in range(segs)]

    def override(self, j: int):
        shift = j % max(1, self.new_tokens // (len(self.steps) + 1) - 1) if self.steps else 0
        steps = {s + shift for s in self.steps}

        def choose(step: int, greedy: int) -> int:
            if step == self.new_tokens - 1:
                return self.eos
            return self.seg if step in steps else self.plain
        return choose


def run(path: Path, quant: str, dtype: str, device: str, args) -> dict:
    import torch

    from tscope.model.batched import BatchDecoder, Request
    from tscope.model.interleave import generate
    from tscope.model.loading import load_terrascope
    from tscope.model.prompt import user_text

    cuda = device.startswith("cuda")
    loaded = load_terrascope(path, dtype=dtype, device=device, quant=quant)
    model, tok = loaded.model, loaded.tokenizer
    budget = Budget(tok, tok.convert_tokens_to_ids(model.config.tokens.seg), args.new_tokens, args.segs)
    side = model.config.image_size
    rng = np.random.default_rng(0)
    text = user_text("What percentage of the image is water?", model.config.system_prompt)
    limit = args.new_tokens + args.segs * model.config.region.max_tokens  # region tokens count towards it

    def tile() -> np.ndarray:
        return (rng.random((side, side, 3)) * 255).astype(np.uint8)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times, encodes = [], []
    for j in range(args.samples + 1):  # the first run warms up
        model.sam_encodes = 0
        sync()
        t0 = time.perf_counter()
        out = generate(model, tok, [tile()], text, limit, override=budget.override(j))
        sync()
        times.append(time.perf_counter() - t0)
        encodes.append(model.sam_encodes)
        assert len(out.masks) == args.segs and len(out.token_ids) == args.new_tokens, (len(out.masks), out.stop)
    row = {"quant": quant, "s/sample": float(np.mean(times[1:])), "encodes": float(np.mean(encodes[1:])),
           "peak b1": torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan"), "tiles/s": {}}
    for batch in args.batches:
        tiles = batch * args.tiles_per_slot
        requests = [Request([tile()], text, max_new_tokens=limit, override=budget.override(j)) for j in range(tiles)]
        model.sam_encodes = 0
        sync()
        t0 = time.perf_counter()
        BatchDecoder(model, tok, batch).run(requests)
        sync()
        row["tiles/s"][batch] = tiles / (time.perf_counter() - t0)
        assert all(len(r.result.masks) == args.segs and len(r.result.token_ids) == args.new_tokens for r in requests)
        assert model.sam_encodes == tiles  # one SAM-2 encode per tile, batched or not
    row["peak"] = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                   * 1024) / 1e9
    del model, loaded
    if cuda:
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="only the tiny model on CPU")
    parser.add_argument("--quant", default="none,8bit,4bit", help="GPU rows: comma list of none, 8bit, 4bit")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--segs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=3, help="batch-1 samples timed (after one warm-up)")
    parser.add_argument("--batches", default="1,4,16,32", help="batch sizes for tiles/s")
    parser.add_argument("--tiles-per-slot", type=int, default=2, help="tiles decoded per batch slot")
    parser.add_argument("--model", type=Path, help="GPU rows: this checkpoint instead of a random real-size one")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    import torch
    from tiny_terrascope import write_native

    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        rows.append(("tiny", "CPU", run(write_native(Path(tmp) / "tiny"), "none", "fp32", "cpu", args)))
        if not args.tiny:
            if torch.cuda.is_available():
                path = args.model or real_size_checkpoint(Path(tmp) / "real")
                name = torch.cuda.get_device_name()
                rows += [("InternVL3-8B + SAM-2 Hiera-L", name, run(path, q, "bf16", "cuda", args))
                         for q in args.quant.split(",")]
            else:
                notes.append("no CUDA device here: the real-size rows need a GPU")
    batches = " | ".join(f"tiles/s b{b}" for b in args.batches)
    print(f"# random weights, greedy, {args.new_tokens} new tokens with {args.segs} [SEG] per tile;"
          f" tiles/s over {args.tiles_per_slot} tiles per batch slot; peak: GPU allocated / CPU process RSS")
    print(f"| model | device | quant | s/sample b1 | {batches} | batched/unbatched (b{args.batches[-1]}) |"
          " SAM-2 encodes/sample | peak GB b1 | peak GB |")
    print("|---" * (9 + len(args.batches) - 1) + "|")
    for size, device, r in rows:
        rates = " | ".join(f"{r['tiles/s'][b]:.2f}" for b in args.batches)
        ratio = r["tiles/s"][args.batches[-1]] * r["s/sample"]
        print(f"| {size} | {device} | {r['quant']} | {r['s/sample']:.3f} | {rates} | {ratio:.2f}x |"
              f" {r['encodes']:.0f} | {r['peak b1']:.1f} | {r['peak']:.1f} |")
    dashes = " - |" * (len(args.batches) + 2)
    print(f"| paper | A100 | bf16 | {PAPER['s/sample']} |{dashes} {PAPER['peak GB']} | - |")
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()

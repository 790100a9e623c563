"""The interleaved [SEG] loop, region selection, SAR selection and frame parsing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))

import tiny_terrascope as tt  # noqa: E402

from tscope.model.config import RegionConfig  # noqa: E402
from tscope.model.fusion import select_modality  # noqa: E402
from tscope.model.generate import choose_frame, generate, recompute  # noqa: E402
from tscope.model.images import TileLayout, choose_grid  # noqa: E402
from tscope.model.regions import mask_on_grid, select_region_tokens  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return tt.build_model(seed=3)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [(rng.random((100, 90, 3)) * 255).astype(np.uint8) for _ in range(2)]


def test_cached_loop_equals_full_recompute_with_region_tokens(tiny, images):
    model, tok = tiny
    model.sam_encodes = 0
    gen = generate(model, tok, images, "How much did the water change?")
    assert len(gen.masks) >= 2 and all(len(r) >= 1 for r in gen.regions)
    assert gen.frames[:2] == [0, 1]  # no "Image: t_i" in the text: the release's alternation
    assert model.sam_encodes == 2  # SAM-2 encodes each image once, however many [SEG]
    predicted, masks = recompute(model, tok, images, "How much did the water change?", gen)
    assert predicted == gen.token_ids
    assert all(np.array_equal(a, b) for a, b in zip(masks, gen.masks, strict=True))


def test_sar_fusion_loop_is_exact_too(tiny, images):
    model, tok = tiny
    gen = generate(model, tok, images[:1], "Is there any water?", sar=images[1])
    assert gen.masks and all(m.shape == (100, 90) for m in gen.masks)
    predicted, masks = recompute(model, tok, images[:1], "Is there any water?", gen, sar=images[1])
    assert predicted == gen.token_ids
    assert all(np.array_equal(a, b) for a, b in zip(masks, gen.masks, strict=True))


def test_decode_masks_keeps_the_candidate_with_the_best_predicted_iou(tiny, images):
    import torch

    model, _ = tiny
    sam = model.sam_encode(images[:1])[0]
    hidden = torch.randn(3, model.internvl.config.text_config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        candidates, predicted = model.decode_candidates(sam, hidden)
        best, best_iou = model.decode_masks(sam, hidden)
    assert candidates.shape[:2] == (3, 3) and predicted.shape == (3, 3)
    pick = predicted.argmax(dim=1)
    assert torch.equal(best, candidates[torch.arange(3), pick])
    assert torch.equal(best_iou, predicted.max(dim=1).values)


def test_frame_parsing():
    assert choose_frame("Image: t2. I segment the water", 0, 2) == 1
    assert choose_frame("First Image: t2 then Image: t1, the forest", 0, 2) == 0
    assert choose_frame("the forest", 3, 2) == 1
    assert choose_frame("Image: t9 forest", 2, 2) == 0
    assert choose_frame("Image: t2", 0, 1) == 0


def test_nearest_and_coverage_rules():
    mask = np.zeros((8, 8), bool)
    mask[0:3, 0:3] = True  # 2x2-px cells: (0,0) fully, (0,1) and (1,0) half, (1,1) a quarter
    nearest = mask_on_grid(mask, (4, 4), "nearest")
    coverage = mask_on_grid(mask, (4, 4), "coverage", 0.5)
    assert nearest[:2, :2].all() and nearest.sum() == 4  # samples pixels 0, 2 of each axis
    assert coverage.sum() == 1 and coverage[0, 0]
    assert mask_on_grid(mask, (4, 4), "coverage", 0.4).sum() == 3
    assert mask_on_grid(mask, (4, 4), "coverage", 0.2).sum() == 4


def test_cap_spreads_tokens_over_the_region():
    layout = TileLayout(cols=1, rows=1, side=16, thumbnail=False)
    mask = np.zeros((160, 160), bool)
    mask[:, :80] = True  # left half: 128 tokens
    idx = select_region_tokens(mask, layout, RegionConfig(max_tokens=8))
    assert len(idx) == 8
    rows, cols = layout.grid_position(idx)
    assert cols.max() < 8 and rows.min() < 4 and rows.max() >= 12 and cols.min() < 3 and cols.max() >= 5
    first = select_region_tokens(mask, layout, RegionConfig(max_tokens=8, sampling="first"))
    assert layout.grid_position(first)[0].max() == 0  # raster order: all from the first row
    uncapped = select_region_tokens(mask, layout, RegionConfig(max_tokens=128))
    assert len(uncapped) == 128


def test_multi_tile_layout_maps_masks_to_the_right_tile_tokens():
    cols, rows = choose_grid(900, 448, 448, 1, 12)
    assert (cols, rows) == (2, 1)
    layout = TileLayout(cols=2, rows=1, side=4, thumbnail=True)
    mask = np.zeros((40, 80), bool)
    mask[:10, 70:] = True  # top-right corner: tile 1, local row 0, local col 3
    idx = select_region_tokens(mask, layout, RegionConfig(max_tokens=8))
    assert list(idx) == [1 * 16 + 0 * 4 + 3]
    assert layout.tokens == 3 * 16
    empty = select_region_tokens(np.zeros((40, 80), bool), layout)
    assert list(empty) == [0]


def test_sar_selected_where_optical_is_uninformative():
    gen = torch.Generator().manual_seed(0)
    question = torch.randn(5, 16, generator=gen)
    optical = torch.zeros(36, 16)  # uninformative: uniform relevance 1/36 everywhere
    sar = torch.randn(36, 16, generator=gen) * 0.01
    sar[:6] = question.mean(0) * 3  # SAR tokens 0..5 answer the question
    chosen = select_modality(optical, sar, question)
    assert chosen[:6].all() and not chosen[6:].any()

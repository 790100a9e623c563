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
from tscope.model.fusion import fuse_region  # noqa: E402
from tscope.model.images import TileLayout, choose_grid  # noqa: E402
from tscope.model.interleave import choose_frame, generate, recompute  # noqa: E402
from tscope.model.prompt import user_text  # noqa: E402
from tscope.model.regions import coverage_grid, select_region_tokens, token_grid  # noqa: E402


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
    gen = generate(model, tok, images, user_text("How much did the water change?", model.config.system_prompt),
                   max_new_tokens=40)
    assert len(gen.masks) >= 2 and all(len(r) >= 1 for r in gen.regions)
    assert gen.frames[:3] == [0, 1, 0]  # the release's alternation
    assert model.sam_encodes == 2  # SAM-2 encodes each image once, however many [SEG]
    assert all(m.shape == (2, 100, 90) for m in gen.frame_masks)  # every [SEG] decoded on both images
    predicted, masks = recompute(model, tok, images, gen)
    assert predicted == gen.token_ids
    assert all(np.array_equal(a, b) for a, b in zip(masks, gen.masks, strict=True))


def test_sar_fusion_loop_is_exact_too(tiny, images):
    model, tok = tiny
    gen = generate(model, tok, images[:1], user_text("Is there any water?", model.config.system_prompt),
                   max_new_tokens=30, sar=images[1])
    assert gen.masks and all(m.shape == (100, 90) for m in gen.masks)
    predicted, masks = recompute(model, tok, images[:1], gen, sar=images[1])
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


def test_frame_rules():
    # Release: the k-th [SEG] of a multi-image prompt goes to image k mod n, whatever the text says.
    assert choose_frame("alternate", "Image: t2. I segment the water", 0, 2) == 0
    assert choose_frame("alternate", "the forest", 3, 2) == 1
    # tscope's text rule (documented option): the last "Image: t<i>" before the [SEG].
    assert choose_frame("text", "Image: t2. I segment the water", 0, 2) == 1
    assert choose_frame("text", "First Image: t2 then Image: t1, the forest", 0, 2) == 0
    assert choose_frame("text", "Image: t9 forest", 2, 2) == 0
    assert choose_frame("text", "Image: t2", 0, 1) == 0


def test_release_and_coverage_grids():
    mask = np.zeros((8, 8), bool)
    mask[0:3, 0:3] = True  # 2x2-px cells: (0,0) fully, (0,1) and (1,0) half, (1,1) a quarter
    layout = TileLayout(cols=1, rows=1, side=4, thumbnail=False)
    release = token_grid(mask, layout, 8, RegionConfig())
    # PIL NEAREST samples cell centres (pixels 1, 3, 5, 7), not top-left corners (0, 2, ...), which
    # would select the 4 cells of the top-left 2x2.
    assert release[0, 0] and release.sum() == 1
    corner = np.zeros((8, 8), bool)
    corner[0, 0] = True
    assert token_grid(corner, layout, 8, RegionConfig()).sum() == 0
    assert list(select_region_tokens(corner, layout, 8)) == [0]  # nothing selected: the release's token 0
    assert coverage_grid(mask, (4, 4), 0.5).sum() == 1 and coverage_grid(mask, (4, 4), 0.5)[0, 0]
    assert coverage_grid(mask, (4, 4), 0.4).sum() == 3
    assert coverage_grid(mask, (4, 4), 0.2).sum() == 4


def test_cap_keeps_one_token_per_cell_in_cell_order():
    layout = TileLayout(cols=1, rows=1, side=16, thumbnail=False)
    mask = np.zeros((160, 160), bool)
    mask[:, :80] = True  # left half: 128 tokens
    idx = select_region_tokens(mask, layout, 160, RegionConfig(max_tokens=8))
    assert len(idx) == 8
    rows, cols = layout.grid_position(idx)
    # A 3x3 grid of cells over the 16 x 8 bounding box; the first 8 cells in row-major cell order.
    # Cell centres (2.67, 1.33), (2.67, 4), ...: the nearest token, the first in token order on ties.
    assert list(rows) == [3, 3, 3, 8, 8, 8, 13, 13] and list(cols) == [1, 4, 7, 1, 4, 7, 1, 4]
    uncapped = select_region_tokens(mask, layout, 160, RegionConfig(max_tokens=128))
    assert len(uncapped) == 128 and list(uncapped) == sorted(uncapped)


def test_multi_tile_layout_maps_masks_to_the_right_tile_tokens():
    cols, rows = choose_grid(900, 448, 448, 1, 12)
    assert (cols, rows) == (2, 1)
    layout = TileLayout(cols=2, rows=1, side=4, thumbnail=True)
    mask = np.zeros((40, 80), bool)
    mask[:10, 70:] = True  # top-right corner: tile 1, local row 0, local col 3
    idx = select_region_tokens(mask, layout, 40, RegionConfig(max_tokens=8))
    assert list(idx) == [1 * 16 + 0 * 4 + 3]
    assert layout.tokens == 3 * 16
    empty = select_region_tokens(np.zeros((40, 80), bool), layout, 40)
    assert list(empty) == [0]


def test_sar_selected_where_optical_is_uninformative():
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(5, 16, generator=gen)
    optical = torch.zeros(36, 16)  # uninformative: uniform relevance over the selected tokens
    sar = torch.randn(36, 16, generator=gen) * 0.01
    sar[:3] = query.mean(0) * 3  # SAR tokens 0..2 answer the question
    tokens, flags = fuse_region(optical, sar, query, np.array([0, 1, 2, 10, 11, 12]))
    assert list(flags) == [1, 1, 1, 0, 0, 0]
    assert torch.equal(tokens[:3], sar[:3]) and torch.equal(tokens[3:], optical[[10, 11, 12]])

"""tscope's optical+SAR region-token selection against the official TerraScope TRAINING code.

The release has no optical+SAR inference path; the paper's text-guided token-level modality selection
exists only in its training forward (``internvl.py``, ``fusion_mode == 'query_select'``, fed by
``SAR_RGB_Dataset.py``). ``tests/reference/make_official_sar_reference.py`` ran both, unedited, on the
tiny reference checkpoint with an optical tile and a SAR tile (VH, VV, mean) and four masks, and
recorded the embeddings the official code wrote at every ``<REGION>`` position (format in
``tests/reference/README.md``). On the same visual tokens, with tscope's own embedding of the same ids as
the query (every text position of the sequence, as training uses), tscope's region indices and
``fuse_region`` must reproduce the official indices, region embeddings (atol 1e-6) and SAR/optical
choices exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tscope.model.fusion import fuse_region  # noqa: E402
from tscope.model.images import TileLayout  # noqa: E402
from tscope.model.interleave import Tokens, text_positions  # noqa: E402
from tscope.model.loading import load_terrascope  # noqa: E402
from tscope.model.regions import select_region_tokens  # noqa: E402

REFERENCE = Path(__file__).parent / "reference" / "data"
DOC = json.loads((REFERENCE / "sar_selection.json").read_text())
OBJECTS = [o["name"] for o in DOC["objects"]]


@pytest.fixture(scope="module")
def ref():
    return np.load(REFERENCE / "sar_selection.npz")


@pytest.fixture(scope="module")
def query(ref):
    """tscope's input embeddings of the reference ids at the text positions of the whole sequence."""
    loaded = load_terrascope(REFERENCE / "checkpoint", dtype="fp32", device="cpu")
    tokens = Tokens(loaded.tokenizer, loaded.model.config.tokens)
    ids = torch.from_numpy(ref["input_ids"])[None]
    with torch.no_grad():
        embeds = loaded.model.embed(ids)[0]
    return embeds[text_positions(ids, tokens).to(embeds.device)].float().cpu()


def _mask(ref, name: str) -> np.ndarray:
    h, w = DOC["image_size_wh"][1], DOC["image_size_wh"][0]
    return np.unpackbits(ref[f"{name}_mask_bits"])[: h * w].reshape(h, w).astype(bool)


def _region_slice(name: str) -> slice:
    start = 0
    for o in DOC["objects"]:
        if o["name"] == name:
            return slice(start, start + o["num_tokens"])
        start += o["num_tokens"]
    raise KeyError(name)


def test_reference_holds_both_choices_and_the_official_query(ref, query):
    # The reference is only a test of the selection if both modalities win somewhere.
    assert DOC["num_sar_choices"] > 0 and DOC["num_optical_choices"] > 0
    # The query is exactly what the official code attended with: the embeddings at the text positions.
    assert query.shape == ref["text_embeds"].shape
    np.testing.assert_allclose(query.numpy(), ref["text_embeds"], rtol=0, atol=0)


@pytest.mark.parametrize("name", OBJECTS)
def test_region_indices_match_the_official_dataset(ref, name):
    index = select_region_tokens(_mask(ref, name), TileLayout(1, 1, 16, False), 448)
    np.testing.assert_array_equal(index, ref[f"{name}_rgb_indices"])
    # The SAR tile's tokens follow the optical tile's 256 in the official sequence.
    np.testing.assert_array_equal(index + DOC["sar_token_offset"], ref[f"{name}_sar_indices"])


@pytest.mark.parametrize("name", OBJECTS)
def test_fuse_region_reproduces_the_official_training_selection(ref, query, name):
    vit = torch.from_numpy(ref["vit_embeds_flat"])
    offset = DOC["sar_token_offset"]
    fused, pick = fuse_region(vit[:offset], vit[offset:], query, ref[f"{name}_rgb_indices"])
    np.testing.assert_array_equal(pick, ref[f"{name}_choice"])
    np.testing.assert_allclose(fused.numpy(), ref["region_embeds"][_region_slice(name)], rtol=0, atol=1e-6)


def test_teacher_forced_sequence_is_the_release_sar_training_sequence(ref):
    """tscope's training sequence for the same optical+SAR sample is the official one, id for id: the
    system text (with the release's indentation before the image blocks), one 448 tile per image, the
    answer, and the region tokens after each [SEG]."""
    from PIL import Image

    from tscope.train.dataset import Sample
    from tscope.train.forward import plan_sequence

    loaded = load_terrascope(REFERENCE / "checkpoint", dtype="fp32", device="cpu")
    optical = np.asarray(Image.open(REFERENCE / DOC["optical_image"]).convert("RGB"))
    vh, vv = (np.asarray(Image.open(REFERENCE / DOC["sar_images"][p]).convert("L")) for p in ("vh", "vv"))
    sar = np.stack([vh, vv, ((vh.astype(np.float32) + vv.astype(np.float32)) / 2).astype(np.uint8)], axis=-1)
    question = DOC["question"].removeprefix("<image>\n")
    sample = Sample("sar", [optical], question, DOC["answer"], [_mask(ref, name) for name in OBJECTS],
                    [0] * len(OBJECTS), sar=sar)
    plan = plan_sequence(loaded.model, loaded.tokenizer, sample)
    seg, region = DOC["special_token_ids"]["[SEG]"], DOC["special_token_ids"]["<REGION>"]
    ids = plan.prompt_ids[0].tolist()
    regions = iter(plan.region_index)
    for token in plan.answer_ids:
        ids.append(token)
        if token == seg:
            ids.extend([region] * len(next(regions)))
    official = ref["input_ids"].tolist()
    # xtuner appends the template's separator ("\n") after <|im_end|> with an ignored label; nothing
    # attends to the last token of a causal sequence, so tscope leaves it out.
    assert official[-1] == loaded.tokenizer.encode("\n")[0]
    assert ids == official[:-1]

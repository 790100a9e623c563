"""Training building blocks without a model: recipes, losses, schedule, data reading, optimizer state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.conftest import DATA, ROOT
from tscope.errors import InputError
from tscope.train.checkpoint import _flatten_optimizer, _unflatten_optimizer
from tscope.train.config import LossRecipe, TrainConfig, load_config
from tscope.train.dataset import TrainData, split_holdout
from tscope.train.losses import (
    IGNORE,
    bce_per_mask,
    candidate_seg_loss,
    dice_per_mask,
    lm_loss,
    mask_iou,
    uncertain_points,
)
from tscope.train.schedule import batch_indices, lr_at, steps_per_epoch


def test_recipes_default_to_the_release_and_keep_table_b_as_paper_recipes():
    # The released config (terrascope_8b.py): AdamW wd 0.05, warmup 0.05, 2 per device x 4 accumulation.
    bare = TrainConfig(stage=2, model="m", data="d.jsonl")
    for stage in (1, 2):
        cfg = load_config(ROOT / "train" / f"stage{stage}.yaml")
        assert cfg.stage == stage
        assert (cfg.optimizer, cfg.weight_decay, cfg.warmup_ratio, cfg.warmup_start_factor) == \
            ("adamw", 0.05, 0.05, 1e-5)
        assert (cfg.batch_size, cfg.device_batch, cfg.grad_accumulation) == (None, 2, 4)
        assert (cfg.global_batch(1), cfg.global_batch(4)) == (8, 32)  # the global batch grows with the processes
        assert (cfg.lr, cfg.scheduler, cfg.min_lr, cfg.epochs, cfg.betas, cfg.max_grad_norm) == \
            (4e-5, "cosine", 0.0, 1, (0.9, 0.999), 1.0)
        assert (cfg.precision, cfg.max_length) == ("bf16", 8192)
        loss = cfg.loss
        assert (loss.bce_weight, loss.dice_weight, loss.iou_weight, loss.candidate) == (2.0, 0.5, 0.0, "predicted")
        assert (loss.points, loss.oversample_ratio, loss.importance_ratio, loss.resolution) == (12544, 3.0, 0.75, "low")
        # The recipe files say what the dataclass defaults say (a recipe without the keys gets the release).
        keys = ("batch_size", "device_batch", "grad_accumulation", "lr", "scheduler", "warmup_ratio",
                "warmup_start_factor", "min_lr", "epochs", "optimizer", "betas", "weight_decay", "max_grad_norm",
                "precision", "max_length", "loss")
        assert {k: cfg.to_dict()[k] for k in keys} == {k: bare.to_dict()[k] for k in keys}
        # Relative paths resolve against the recipe's folder, not the working directory.
        assert cfg.out == str(ROOT / "train" / ".." / "runs" / f"stage{stage}")
        paper = load_config(ROOT / "train" / f"stage{stage}-paper.yaml")
        assert (paper.batch_size, paper.global_batch(4), paper.lr, paper.scheduler, paper.warmup_ratio) == \
            (32, 32, 4e-5, "cosine", 0.3)
        assert (paper.epochs, paper.precision, paper.optimizer, paper.weight_decay) == (1, "bf16", "adam", 0.0)
        assert "device_batch" not in paper.to_dict()  # the global batch replaces the per-process one
        assert paper.out.endswith(f"stage{stage}-paper")
    lora = load_config(ROOT / "train" / "stage2.yaml").lora
    assert (lora.r, lora.alpha, lora.dropout) == (128, 256, 0.05)
    assert "q_proj" in lora.target_modules and "down_proj" in lora.target_modules
    ds = json.loads((ROOT / "train" / "deepspeed_zero2.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2


def test_a_recipe_gives_the_batch_one_way(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("stage: 2\nmodel: m\ndata: d.jsonl\nbatch_size: 32\ngrad_accumulation: 4\n")
    with pytest.raises(InputError, match="batch_size .* grad_accumulation"):
        load_config(path)
    path.write_text("stage: 2\nmodel: m\ndata: d.jsonl\nbatch_size: 32\n")
    cfg = load_config(path)
    assert cfg.global_batch(2) == 32 and TrainConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    path.write_text("stage: 2\nmodel: m\ndata: d.jsonl\ndevice_batch: 1\ngrad_accumulation: 3\n")
    assert load_config(path).global_batch(2) == 6


def test_config_errors_and_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("stage: 2\nmodel: m\ndata: d.jsonl\nbatch_sise: 4\n")
    with pytest.raises(InputError, match="batch_sise"):
        load_config(path)
    path.write_text("stage: 3\nmodel: m\ndata: d.jsonl\n")
    with pytest.raises(InputError, match="stage"):
        load_config(path)
    path.write_text("stage: 1\nmodel: m\ndata: d.jsonl\n")
    cfg = load_config(path, max_steps=7, eval_every=None, out=tmp_path / "o")
    assert cfg.max_steps == 7 and cfg.eval_every == 0 and cfg.out == str((tmp_path / "o").resolve())
    assert cfg.data == str(tmp_path / "d.jsonl")
    with pytest.raises(InputError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    assert TrainConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


@pytest.mark.parametrize(("line", "message"), [
    ("lr: abc", "lr must be float"),
    ("batch_size: 3.5", "batch_size must be int"),
    ("train_embeddings: 1", "train_embeddings must be bool"),
    ("betas: 0.9", "betas must be two numbers"),
    ("loss: {bce_weight: x}", "loss.bce_weight must be float"),
    ("loss: {candidate: best}", "loss.candidate must be one of predicted, closest"),
    ("loss: {resolution: full}", "loss.resolution must be one of low, image"),
    ("loss: {points: -1}", "loss.points must be >= 0"),
    ("grad_accumulation: 0", "grad_accumulation"),
    ("lora: {target_modules: q_proj}", "lora.target_modules must be a list"),
])
def test_config_values_of_the_wrong_type_are_input_errors(tmp_path, line, message):
    path = tmp_path / "r.yaml"
    path.write_text(f"stage: 2\nmodel: m\ndata: d.jsonl\n{line}\n")
    with pytest.raises(InputError, match=message):
        load_config(path)


def test_config_accepts_yaml_floats_without_a_dot(tmp_path):
    # PyYAML reads 4e-5 as a string (YAML 1.1 floats need a dot); a recipe author means the number.
    path = tmp_path / "r.yaml"
    path.write_text("stage: 2\nmodel: m\ndata: d.jsonl\nlr: 4e-5\nloss: {dice_weight: 1}\n")
    cfg = load_config(path)
    assert cfg.lr == 4e-5 and isinstance(cfg.loss.dice_weight, float)


def test_lm_loss_only_counts_labelled_positions():
    torch.manual_seed(0)
    logits = torch.randn(6, 11)
    labels = torch.tensor([IGNORE, 3, IGNORE, IGNORE, 7, 2])
    # Position i predicts labels[i + 1]: targets at 1, 4, 5 come from logits rows 0, 3, 4.
    expected = torch.nn.functional.cross_entropy(logits[[0, 3, 4]], torch.tensor([3, 7, 2]))
    assert torch.allclose(lm_loss(logits, labels), expected)
    # Changing logits that predict ignored positions does not change the loss.
    changed = logits.clone()
    changed[[1, 2, 5]] += 5
    assert torch.allclose(lm_loss(changed, labels), expected)
    assert float(lm_loss(logits, torch.full((6,), IGNORE))) == 0.0


def test_seg_loss_weights_bce_and_dice():
    target = torch.zeros(1, 4, 4)
    target[0, :2] = 1
    logits = torch.where(target.bool(), torch.tensor(3.0), torch.tensor(-3.0))
    p = torch.sigmoid(torch.tensor(3.0))
    bce = -math.log(float(p))  # every pixel is on the right side with margin 3
    inter = 8 * float(p)  # 8 target pixels at probability p
    total = 8 * float(p) + 8 * (1 - float(p)) + 8  # sum(p) over 16 pixels + sum(t)
    dice = 1 - (2 * inter + 1) / (total + 1)
    # The dense training loss with one SAM-2 candidate and no IoU-head term is the plain weighted BCE + Dice.
    one, perfect = logits[:, None], torch.ones(1, 1)
    for resolution in ("low", "image"):
        dense = LossRecipe(points=0, resolution=resolution)
        loss, parts, _ = candidate_seg_loss(one, perfect, target, 4, dense)
        assert parts["bce"] == pytest.approx(bce, rel=1e-5) and parts["dice"] == pytest.approx(dice, rel=1e-5)
        assert float(loss) == pytest.approx(2 * bce + 0.5 * dice, rel=1e-5)
    paper, _, _ = candidate_seg_loss(one, perfect, target, 4, LossRecipe(bce_weight=0.5, points=0))
    assert float(paper) == pytest.approx(0.5 * bce + 0.5 * dice, rel=1e-5)
    # Low-res logits are resized to the target: a 2x2 grid of the same pattern gives the same IoU.
    assert mask_iou(logits, target.bool(), 4) == [1.0]
    assert mask_iou(-torch.ones(1, 2, 2) * 9, torch.zeros(1, 4, 4), 4) == [None]
    assert float(dice_per_mask(torch.full((1, 3, 3), 20.0), torch.ones(1, 3, 3)).mean()) == pytest.approx(0.0, abs=1e-6)


def test_seg_loss_is_computed_where_the_release_computes_it():
    # resolution "low" (release): the ground truth goes nearest to the decoder's grid, where the image-size
    # comparison (tscope's option) sees the detail the low-res grid cannot hold.
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 2, 2)
    target = torch.zeros(1, 4, 4)
    target[0, 1::2, 1::2] = 1  # lit pixels that nearest 4 -> 2 (rows/columns 0 and 2) never picks
    low, _, _ = candidate_seg_loss(logits, torch.ones(1, 1), target, 4, LossRecipe(points=0))
    expected = 2 * bce_per_mask(logits[:, 0], torch.zeros(1, 2, 2)) + 0.5 * dice_per_mask(logits[:, 0],
                                                                                            torch.zeros(1, 2, 2))
    assert float(low) == pytest.approx(float(expected), rel=1e-6)
    image, _, _ = candidate_seg_loss(logits, torch.ones(1, 1), target, 4, LossRecipe(points=0, resolution="image"))
    assert float(image) != pytest.approx(float(low), rel=1e-3)


def test_seg_loss_trains_the_best_predicted_candidate_by_default():
    # Candidate 0 is the ground truth, candidate 2 is wrong but has the best predicted IoU.
    target = torch.zeros(1, 8, 8)
    target[0, :4] = 1
    good = torch.where(target.bool(), 5.0, -5.0)
    cands = torch.stack([good, -good, -good], dim=1).requires_grad_(True)  # (1, 3, 8, 8)
    iou_pred = torch.tensor([[0.1, 0.2, 0.9]], requires_grad=True)
    loss, parts, kept = candidate_seg_loss(cands, iou_pred, target, 8)
    loss.backward()
    assert kept.tolist() == [2]
    # The release: only the kept candidate gets gradient, and the IoU head none.
    assert cands.grad[0, 2].abs().sum() > 0 and cands.grad[0, :2].abs().sum() == 0
    assert iou_pred.grad is None and parts["iou_mse"] == 0.0 and parts["bce"] > 1
    # tscope's option: the candidate closest to the truth learns, and the IoU head regresses actual IoUs.
    cands.grad = None
    closest = LossRecipe(candidate="closest", iou_weight=1.0, points=0, resolution="image")
    loss, parts, kept = candidate_seg_loss(cands, iou_pred, target, 8, closest)
    loss.backward()
    assert kept.tolist() == [2] and cands.grad[0, 2].abs().sum() == 0
    assert parts["bce"] < 0.01 and parts["iou_mse"] == pytest.approx(((0.1 - 1) ** 2 + 0.2 ** 2 + 0.9 ** 2) / 3)
    assert iou_pred.grad is not None


def test_point_sampling_uses_the_configured_counts_and_is_seeded(monkeypatch):
    from tscope.train import losses

    # point_sample reads bilinear values at [0, 1] coordinates: pixel (row 0, column 1) of a 2x2 map
    # has its centre at (x, y) = (0.75, 0.25).
    grid = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert losses.point_sample(grid, torch.tensor([[[0.75, 0.25], [0.5, 0.5]]])).tolist() == [[2.0, 2.5]]
    # A ramp: logits are near 0 (uncertain) around the middle column only.
    logits = torch.linspace(-8, 8, 64).expand(2, 64, 64).contiguous()
    torch.manual_seed(5)
    points = uncertain_points(logits, 400, 3.0, 0.75)
    assert points.shape == (2, 400, 2)
    torch.manual_seed(5)
    drawn = torch.rand(2, 1200, 2)  # the oversampled draw: 3 x 400
    values = losses.point_sample(logits, drawn).abs()
    # The first 300 (75%) are the most uncertain of the 1200 drawn, the last 100 fresh uniform points.
    assert torch.equal(points[:, :300], torch.gather(drawn, 1, (-values).topk(300, dim=1).indices[..., None]
                                                     .expand(-1, -1, 2)))
    assert float(losses.point_sample(logits, points[:, :300]).abs().max()) < float(values.median())
    assert float((points[:, 300:, 0] - 0.5).abs().mean()) > 0.15  # uniform: not gathered at the middle
    # The loss sees loss.points values per mask, and the same seed gives the same loss.
    seen = []
    real = losses.bce_per_mask
    monkeypatch.setattr(losses, "bce_per_mask", lambda x, t: seen.append(tuple(x.shape)) or real(x, t))
    target = torch.zeros(2, 32, 32)
    target[:, :, :16] = 1
    cands = torch.randn(2, 3, 16, 16)
    runs = []
    iou_pred = torch.rand(2, 3)
    for seed in (1, 1, 2):
        torch.manual_seed(len(runs))  # torch's default RNG plays no part when a generator is given
        generator = torch.Generator().manual_seed(seed)
        runs.append(float(candidate_seg_loss(cands, iou_pred, target, 32, LossRecipe(points=37), generator)[0]))
    assert seen == [(2, 37)] * 3
    assert runs[0] == runs[1] != runs[2]
    seen.clear()
    candidate_seg_loss(cands, torch.rand(2, 3), target, 32, LossRecipe(points=0))
    assert seen == [(2, 16, 16)]  # dense: every pixel of the decoder's grid


def test_schedule_warmup_cosine_and_data_order():
    total, lr = 100, 4e-5
    assert lr_at(0, total, lr) == pytest.approx(lr * 1e-5)
    assert lr_at(30, total, lr) == pytest.approx(lr)  # end of 30% warmup: peak
    assert lr_at(15, total, lr) == pytest.approx(lr * (1e-5 + (1 - 1e-5) * 0.5))
    assert lr_at(65, total, lr) == pytest.approx(lr * 0.5)  # halfway through the cosine
    assert lr_at(100, total, lr) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(5, 10, 1.0, warmup_ratio=0.0, kind="constant") == 1.0
    # Each epoch is a permutation of all samples; steps are reproducible from (seed, step) alone.
    n, bs = 10, 4
    assert steps_per_epoch(n, bs) == 3 and steps_per_epoch(n, bs, drop_last=True) == 2
    epoch0 = sum((batch_indices(s, n, bs, seed=5) for s in range(3)), [])
    assert sorted(epoch0) == list(range(n))
    epoch1 = sum((batch_indices(s, n, bs, seed=5) for s in range(3, 6)), [])
    assert sorted(epoch1) == list(range(n)) and epoch1 != epoch0
    assert batch_indices(4, n, bs, seed=5) == batch_indices(4, n, bs, seed=5)


def test_optimizer_state_round_trip_without_pickle():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1, betas=(0.8, 0.9))
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
    tensors, meta = _flatten_optimizer(opt.state_dict())
    json.dumps(meta)  # the non-tensor part is plain JSON
    restored = torch.optim.Adam(net.parameters(), lr=0.5)
    restored.load_state_dict(_unflatten_optimizer(tensors, meta))
    a, b = opt.state_dict(), restored.state_dict()
    assert a["param_groups"][0]["betas"] == b["param_groups"][0]["betas"] == (0.8, 0.9)
    for pid in a["state"]:
        for key in a["state"][pid]:
            assert torch.equal(torch.as_tensor(a["state"][pid][key]), torch.as_tensor(b["state"][pid][key]))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from tscope.data.synth import Sources, synthesise

    out = tmp_path_factory.mktemp("cot")
    synthesise([DATA / "slovenia_s2_t2.tif"], out, Sources.open(DATA / "slovenia_lulc.tif"), seed=3, chip=50,
               tasks="coverage,boundary")
    return out / "terra_cot.jsonl"


def test_dataset_reads_synthesised_terra_cot(synth, tmp_path):
    import rasterio

    from tscope.data import rle

    data = TrainData.open(synth)
    assert len(data) >= 4
    records = [json.loads(line) for line in synth.read_text().splitlines()]
    with rasterio.open(DATA / "slovenia_s2_t2.tif") as src:
        height, width = src.height, src.width
    for i, record in enumerate(records):
        sample = data[i]
        assert sample.question and "<image>" not in sample.question
        assert sample.answer.count("[SEG]") == len(sample.masks) == len(record["masks"]) == len(sample.frames)
        assert all(f == 0 for f in sample.frames) and len(sample.images) == 1
        assert sample.images[0].dtype == np.uint8 and sample.images[0].shape[2] == 3
        assert sample.images[0].shape[0] <= height and sample.images[0].shape[1] <= width
        for mask, group in zip(sample.masks, record["masks"], strict=True):
            assert np.array_equal(mask, np.logical_or.reduce([rle.decode(g) for g in group]))
    # A pair without `frames`: first half of the masks on the pre image, as the release's loader splits them.
    pair = dict(records[-1])
    pair.pop("frames")
    pair["pre_image"] = pair["post_image"] = pair.pop("image")
    pair["masks"] = pair["masks"] * 2 if len(pair["masks"]) == 1 else pair["masks"]
    pair["conversations"] = [pair["conversations"][0], {"from": "gpt", "value": "a [SEG] b [SEG]"}]
    pair["masks"] = pair["masks"][:2]
    sample = TrainData([pair], synth.parent)[0]
    assert sample.frames == [0, 1] and len(sample.images) == 2
    broken = dict(records[0], conversations=[records[0]["conversations"][0], {"from": "gpt", "value": "no seg"}])
    with pytest.raises(InputError, match=r"0 \[SEG\]"):
        TrainData([broken], synth.parent)[0]
    with pytest.raises(InputError, match="not found"):
        TrainData([records[0]], tmp_path)[0]


def test_holdout_split_is_seeded_and_disjoint():
    records = [{"id": i} for i in range(50)]
    train, held = split_holdout(records, 0.1, seed=1)
    assert len(held) == 5 and len(train) == 45
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in held})
    assert split_holdout(records, 0.1, seed=1) == (train, held)
    assert split_holdout(records, 0.0, seed=1) == (records, [])

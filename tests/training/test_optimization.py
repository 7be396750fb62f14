"""Layer-wise lr decay groups, the no-weight-decay rule, the schedule and the EMA, with exact numbers."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from internimage_hf import InternImageForImageClassification
from internimage_hf.training.ema import ModelEMA
from internimage_hf.training.models import preset_config
from internimage_hf.training.optimization import (
    build_optimizer,
    build_scheduler,
    layer_id_for,
    parameter_groups,
    skips_weight_decay,
)

DEPTHS = [1, 1, 2, 1]  # the `tiny` preset: 5 blocks, so the head is layer 6


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return InternImageForImageClassification(preset_config("tiny", num_labels=3))


@pytest.mark.parametrize(
    ("name", "layer_id"),
    [
        ("internimage.embeddings.conv1.weight", 0),
        ("internimage.embeddings.norm2.bias", 0),
        ("internimage.encoder.stages.0.layers.0.dcn.offset.weight", 1),
        ("internimage.encoder.stages.0.downsample.conv.weight", 1),
        ("internimage.encoder.stages.1.layers.0.mlp.fc1.weight", 2),
        ("internimage.encoder.stages.2.layers.0.norm1.weight", 3),
        ("internimage.encoder.stages.2.layers.1.norm1.weight", 4),
        ("internimage.encoder.stages.2.downsample.norm.weight", 4),
        ("internimage.encoder.stages.3.layers.0.dcn.input_proj.weight", 5),
        ("internimage.encoder.stages.3.norm.weight", 5),
        ("head.conv.weight", 6),
        ("classifier.weight", 6),
    ],
)
def test_layer_ids(name, layer_id):
    assert layer_id_for(name, DEPTHS) == layer_id


def test_no_weight_decay_rule(model):
    params = dict(model.named_parameters())
    assert skips_weight_decay("classifier.bias", params["classifier.bias"])
    assert skips_weight_decay("head.norm.weight", params["head.norm.weight"])
    name = "internimage.encoder.stages.0.layers.0.norm1.weight"
    assert skips_weight_decay(name, params[name])
    assert skips_weight_decay("x.layer_scale1", torch.zeros(4))
    assert not skips_weight_decay("classifier.weight", params["classifier.weight"])
    assert not skips_weight_decay("head.conv.weight", params["head.conv.weight"])


def test_parameter_groups_layer_decay(model):
    groups = parameter_groups(model, weight_decay=0.05, layer_decay=0.5, base_lr=1e-3)
    # Every trainable parameter sits in exactly one group.
    grouped = [id(p) for group in groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    by_name = {name: group for group in groups for name in group["names"]}
    # lr = base * decay ** (num_layers + 1 - layer_id) with num_layers = 5.
    expected = {
        "internimage.embeddings.conv1.weight": (0, 1e-3 * 0.5**6, 0.05),
        "internimage.embeddings.conv1.bias": (0, 1e-3 * 0.5**6, 0.0),
        "internimage.encoder.stages.2.layers.1.dcn.offset.weight": (4, 1e-3 * 0.5**2, 0.05),
        "internimage.encoder.stages.2.downsample.norm.weight": (4, 1e-3 * 0.5**2, 0.0),
        "classifier.weight": (6, 1e-3, 0.05),
        "head.norm.bias": (6, 1e-3, 0.0),
    }
    for name, (layer_id, lr, weight_decay) in expected.items():
        group = by_name[name]
        assert group["layer_id"] == layer_id, name
        assert group["lr"] == pytest.approx(lr, rel=1e-12), name
        assert group["weight_decay"] == weight_decay, name
    assert len({group["layer_id"] for group in groups}) == 7


def test_parameter_groups_without_layer_decay(model):
    groups = parameter_groups(model, weight_decay=0.05, layer_decay=1.0, base_lr=1e-3)
    assert len(groups) == 2  # decayed and not decayed, all at the base lr
    assert {group["lr"] for group in groups} == {1e-3}
    assert sorted(group["weight_decay"] for group in groups) == [0.0, 0.05]


def test_build_optimizer_is_fused_and_steps_like_the_loop_adamw():
    torch.manual_seed(0)
    options = SimpleNamespace(
        weight_decay=0.05, layer_decay=0.9, learning_rate=1e-3, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8
    )
    fused_model = InternImageForImageClassification(preset_config("tiny", num_labels=3))
    loop_model = copy.deepcopy(fused_model)
    fused = build_optimizer(fused_model, options)
    assert fused.defaults["fused"] is True
    loop = torch.optim.AdamW(parameter_groups(loop_model, 0.05, 0.9, 1e-3), betas=(0.9, 0.999), eps=1e-8, foreach=False)
    initial = fused_model.classifier.weight.detach().clone()
    for step in range(3):
        for model in (fused_model, loop_model):
            torch.manual_seed(step)
            for parameter in model.parameters():
                parameter.grad = torch.randn_like(parameter)
        fused.step()
        loop.step()
    for (name, a), b in zip(fused_model.named_parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
    assert (fused_model.classifier.weight - initial).abs().mean() > 5e-4  # the steps moved it (lr 1e-3, 3 steps)


def test_warmup_cosine_schedule():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [parameter], "lr": 1.0}, {"params": [], "lr": 0.5}], lr=1.0)
    scheduler = build_scheduler(optimizer, "cosine", warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == [0.0, 0.0]
    assert lrs[2] == pytest.approx([0.5, 0.25])  # linear warmup, the layer scale kept
    assert lrs[4] == pytest.approx([1.0, 0.5])
    assert lrs[8][0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))


def test_ema_update_numbers():
    torch.manual_seed(0)
    online = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(online, decay=0.9)
    start = online[0].weight.detach().clone()
    with torch.no_grad():
        online[0].weight.add_(1.0)
        online[1].running_mean.fill_(3.0)
    ema.update(online)
    torch.testing.assert_close(ema.module[0].weight, start + 0.1, rtol=0, atol=1e-6)
    torch.testing.assert_close(ema.module[1].running_mean, torch.full((2,), 3.0))  # buffers copied
    ema.update(online)  # 0.9 * (start + 0.1) + 0.1 * (start + 1) = start + 0.19
    torch.testing.assert_close(ema.module[0].weight, start + 0.19, rtol=0, atol=1e-6)
    assert ema.num_updates == 2
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(online, decay=1.0)

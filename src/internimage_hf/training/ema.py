"""Exponential moving average of model weights (the official recipe keeps one with decay 0.9999)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """A frozen copy of a model whose floating-point parameters track `decay * ema + (1 - decay) * online`.

    Buffers (e.g. BatchNorm running statistics) are copied, not averaged, as in timm's `ModelEma`. The copy
    lives on the online model's device and is kept in float32, also when an engine (DeepSpeed bf16/fp16) holds the
    online weights in 16 bits: a 16-bit average would lose updates of size (1 - decay) entirely.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.module = copy.deepcopy(model).float().eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step from the (unwrapped) online `model`."""
        online = dict(model.named_parameters())
        for name, ema_param in self.module.named_parameters():
            value = online[name].detach()
            if ema_param.is_floating_point():
                ema_param.lerp_(value.to(ema_param.dtype), 1.0 - self.decay)
            else:
                ema_param.copy_(value)
        online_buffers = dict(model.named_buffers())
        for name, ema_buffer in self.module.named_buffers():
            ema_buffer.copy_(online_buffers[name])
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (parameters and buffers), like `nn.Module.state_dict`."""
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state_dict)

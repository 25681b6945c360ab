"""The transformer branch rewritten for export: the same weights and arithmetic, a smaller graph.

``torch.onnx.export`` of ``nn.TransformerEncoderLayer`` writes each attention block as the
generic multi-head-attention path: time-major transposes around it, the batch size read
back with Shape/Gather/Concat for every reshape, and separate reshapes of q, k and v. For a
64-wide model with 70 frames that bookkeeping costs about as much as the arithmetic it wraps
(the shipped two-model graph had 90 Reshape and 64 Transpose nodes). ``LeanEncoderLayer``
computes the same inference-mode layer (post-norm, ReLU, no masks) from the same parameter
tensors, with one projection of q, k and v, one reshape and transpose into heads and one
back.

Used by ``exporter.export_onnx`` on a copy of the wrapper; the parity check still compares
the exported graph with the original PyTorch modules. Layers of any other kind (pre-norm,
another activation, key/value biases, separate q/k/v weights) are exported as they are.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

RELU = 1  # nn.TransformerEncoderLayer.activation_relu_or_gelu for ReLU


def supports(layer: nn.Module) -> bool:
    """Whether ``layer`` is an ``nn.TransformerEncoderLayer`` that ``LeanEncoderLayer`` reproduces."""
    if not isinstance(layer, nn.TransformerEncoderLayer):
        return False
    attn = layer.self_attn
    return (
        not layer.norm_first
        and getattr(layer, "activation_relu_or_gelu", None) == RELU
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.in_proj_bias is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
    )


class LeanEncoderLayer(nn.Module):
    """Inference-only ``nn.TransformerEncoderLayer`` (see the module docstring); input and
    output ``(batch, frames, d_model)``."""

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        super().__init__()
        if not supports(layer):
            raise ValueError("LeanEncoderLayer reproduces post-norm ReLU layers with one q/k/v projection only")
        attn = layer.self_attn
        self.n_heads = attn.num_heads
        self.head_dim = attn.embed_dim // attn.num_heads
        self.scale = self.head_dim**-0.5
        # The trained tensors themselves (float16-exact ones stay so, for store_float16).
        # skip_init: no random initialisation, so exporting leaves torch's RNG where it was
        self.in_proj = nn.utils.skip_init(nn.Linear, attn.embed_dim, 3 * attn.embed_dim)
        self.in_proj.weight, self.in_proj.bias = attn.in_proj_weight, attn.in_proj_bias
        self.out_proj = attn.out_proj
        self.norm1, self.norm2 = layer.norm1, layer.norm2
        self.linear1, self.linear2 = layer.linear1, layer.linear2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, width = x.shape[1], x.shape[2]
        heads = self.in_proj(x).reshape(-1, frames, 3 * self.n_heads, self.head_dim).transpose(1, 2)
        query, key, value = heads.split(self.n_heads, dim=1)  # (batch, n_heads, frames, head_dim) each
        weights = torch.softmax((query * self.scale) @ key.transpose(2, 3), dim=-1)
        attended = (weights @ value).transpose(1, 2).reshape(-1, frames, width)
        x = self.norm1(x + self.out_proj(attended))
        return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))


class LeanEncoder(nn.Module):
    """``nn.TransformerEncoder`` (no mask) with its supported layers made lean."""

    def __init__(self, encoder: nn.TransformerEncoder) -> None:
        super().__init__()
        self.layers = nn.ModuleList(LeanEncoderLayer(layer) if supports(layer) else layer for layer in encoder.layers)
        self.norm = encoder.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x if self.norm is None else self.norm(x)


def lean_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in eval mode with every ``nn.TransformerEncoder`` in it made
    lean; ``module`` itself is left untouched."""
    lean = copy.deepcopy(module).eval()
    replaced = 0
    for parent in list(lean.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.TransformerEncoder):
                setattr(parent, name, LeanEncoder(child))
                replaced += 1
    log.debug("lean export: %d transformer encoder(s) rewritten", replaced)
    return lean

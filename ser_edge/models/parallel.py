"""ParallelModel: a 2D CNN stack in parallel with a TransformerEncoder (PyTorch).

Input ``(batch, 1, n_mels, n_frames)`` log-mel (already standardised by the caller or by
the exported graph). The CNN branch is a stack of Conv + MaxPool + BatchNorm + ReLU +
Dropout blocks; the transformer branch max-pools the spectrogram to a sequence of
``d_model``-dim frames (d_model = n_mels / freq_pool) and averages the encoder output over
time. The two embeddings are concatenated into a ``LazyLinear`` classifier, which is
materialised by the first forward pass (export fixes T for a 3 s clip).

Speed note: the seed applies BatchNorm/ReLU/Dropout at full resolution before pooling;
those memory-bound element-wise ops dominated CPU training time. Here each block pools
right after its convolution (max-pooling commutes with the monotone ReLU; BatchNorm then
normalises the pooled map), which cuts the element-wise work by the pool area.

Imported only by training and export: the edge runtime never imports this module.
"""

from __future__ import annotations

import torch
from torch import nn

from ser_edge.models.config import ModelConfig

STD_EPS = 1e-5  # keeps the standard deviation's gradient finite on constant rows


def normalise(x: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """The input both branches see: each clip's mean per mel band removed if configured."""
    return x - x.mean(dim=-1, keepdim=True) if config.utterance_norm else x


def pool_time(conv: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """The CNN map ``(B, C, F, T)`` as a vector per example (see ``conv_time_pool``)."""
    if config.conv_time_pool == "stats":
        mean = conv.mean(dim=-1)
        std = torch.sqrt(((conv - mean.unsqueeze(-1)) ** 2).mean(dim=-1) + STD_EPS)
        conv = torch.cat([mean, std], dim=1)
    return torch.flatten(conv, start_dim=1)


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al., CVPR 2018): each channel of ``(B, C, F, T)`` times a gate
    in (0, 1) computed from every channel's mean over (freq, time)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x.mean(dim=(2, 3)))[:, :, None, None]


class ConvBlock(nn.Sequential):
    """Conv, max-pool, BatchNorm, ReLU[, squeeze-and-excitation], dropout. The optional
    gate sits after the ReLU, so only the parameter-free dropout moves up one index: the
    layers with weights keep theirs (and checkpoints their keys) with it on or off."""

    def __init__(self, in_ch: int, out_ch: int, pool: tuple[int, int], dropout: float, se_reduction: int = 0) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.MaxPool2d(pool, stride=pool),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            *((SqueezeExcite(out_ch, se_reduction),) if se_reduction else ()),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
        )


class MixStyle(nn.Module):
    """Training-only mixing of per-channel feature statistics between examples (see
    ``ModelConfig.mixstyle_prob``). Draws from torch's global RNG, which the trainer seeds
    and checkpoints."""

    def __init__(self, prob: float, alpha: float) -> None:
        super().__init__()
        self.prob = prob
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob == 0 or len(x) < 2 or float(torch.rand(())) >= self.prob:
            return x
        mean = x.mean(dim=(2, 3), keepdim=True).detach()
        std = torch.sqrt(x.var(dim=(2, 3), keepdim=True) + STD_EPS).detach()
        weight = torch.distributions.Beta(self.alpha, self.alpha).sample((len(x), 1, 1, 1))
        other = torch.randperm(len(x))
        mixed_mean = weight * mean + (1 - weight) * mean[other]
        mixed_std = weight * std + (1 - weight) * std[other]
        return (x - mean) / std * mixed_std + mixed_mean


class ParallelModel(nn.Module):
    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config
        channels = (1, *config.conv_channels)
        self.conv = nn.Sequential(
            *(
                ConvBlock(channels[i], channels[i + 1], config.conv_pools[i], config.conv_dropout, config.conv_se_reduction)
                for i in range(len(config.conv_channels))
            )
        )
        self.mixstyle = MixStyle(config.mixstyle_prob, config.mixstyle_alpha)
        self.transformer_pool = nn.MaxPool2d(config.transformer_pool, stride=config.transformer_pool)
        layer = nn.TransformerEncoderLayer(
            d_model=config.d_model,
            nhead=config.n_heads,
            dim_feedforward=config.ff_dim,
            dropout=config.transformer_dropout,
            activation="relu",
            batch_first=True,
            norm_first=config.transformer_norm_first,
        )
        # enable_nested_tensor=False keeps the eager fast path out of training and export.
        self.transformer = nn.TransformerEncoder(layer, num_layers=config.n_layers, enable_nested_tensor=False)
        self.classifier = nn.LazyLinear(config.n_classes)

    def pool_time(self, conv: torch.Tensor) -> torch.Tensor:
        return pool_time(conv, self.config)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return normalise(x, self.config)

    def cnn_features(self, x: torch.Tensor) -> torch.Tensor:
        """The CNN branch's vector per example, from :meth:`normalise`'s output."""
        return self.pool_time(self.conv[1:](self.mixstyle(self.conv[0](x))))

    def transformer_features(self, x: torch.Tensor) -> torch.Tensor:
        """The transformer branch's ``d_model`` vector per example, from :meth:`normalise`'s output."""
        seq = self.transformer_pool(x).squeeze(1).transpose(1, 2)  # (B, T', d_model)
        return self.transformer(seq).mean(dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalise(x)
        return torch.cat([self.cnn_features(x), self.transformer_features(x)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_classes)``."""
        return self.classifier(self.embed(x))

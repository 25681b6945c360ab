"""ModelConfig: the ParallelModel's architecture as plain, torch-free settings.

Kept apart from ``parallel.py`` so that the recipes (``ser_edge/train/recipes.py``) and the
command line can name and check a model without importing torch.
"""

from __future__ import annotations

import dataclasses

CONV_TIME_POOLS = ("flatten", "stats")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    n_classes: int = 8
    n_mels: int = 128
    conv_channels: tuple[int, ...] = (16, 32, 64)
    # The seed pools (2,2),(4,4),(4,4) and feeds the transformer 140 frames (pool (2,4)).
    # Pooling 4x4 first and 70 transformer frames gives the same 64x4x17 conv map at
    # 0.31 s instead of 0.85 s per training batch of 32 on 2 cores (profiled with
    # torch.profiler: full-resolution max-pool backward and dropout RNG dominated).
    conv_pools: tuple[tuple[int, int], ...] = ((4, 4), (4, 4), (2, 2))
    conv_dropout: float = 0.3
    d_model: int = 64
    n_heads: int = 4
    ff_dim: int = 512
    n_layers: int = 4
    transformer_dropout: float = 0.4
    transformer_pool: tuple[int, int] = (2, 8)  # (freq, time): 128 mels -> d_model 64
    # Layer norm before each encoder sub-layer (pre-norm) instead of after it (PyTorch's
    # default, post-norm). docs/ablation.md, "The transformer branch goes unused".
    transformer_norm_first: bool = False
    # Per-utterance mean normalisation: subtract each mel band's mean over the window's
    # frames before both branches (removes a fixed channel/speaker spectral envelope).
    utterance_norm: bool = False
    # How the CNN branch's (channels, freq, time) map becomes a vector: "flatten" (the
    # seed: weights tied to time positions) or "stats" (mean and standard deviation over
    # time per channel and frequency row: invariant to where in the window speech sits).
    conv_time_pool: str = "flatten"
    # MixStyle (Zhou et al., ICLR 2021) after the first CNN block, in training only: with
    # this probability per batch, each example's per-channel mean and standard deviation
    # over (freq, time) are replaced by a Beta(alpha, alpha) mix of its own and another
    # example's, simulating new speakers' feature statistics. 0 = off; identity at inference,
    # so it never reaches the exported graph.
    mixstyle_prob: float = 0.0
    mixstyle_alpha: float = 0.1
    # Squeeze-and-excitation (Hu et al., CVPR 2018) in every CNN block, after its ReLU: each
    # channel is scaled by a gate computed from all channels' means over (freq, time), through
    # a bottleneck of channels // conv_se_reduction units. 0 = off (the blocks of the seed).
    conv_se_reduction: int = 0

    def __post_init__(self) -> None:
        if self.conv_time_pool not in CONV_TIME_POOLS:
            raise ValueError(f"conv_time_pool must be one of {CONV_TIME_POOLS}, got {self.conv_time_pool!r}")
        if not 0.0 <= self.mixstyle_prob <= 1.0:
            raise ValueError(f"mixstyle_prob must be in [0, 1], got {self.mixstyle_prob}")
        if self.conv_se_reduction < 0:
            raise ValueError(f"conv_se_reduction must be 0 (off) or positive, got {self.conv_se_reduction}")
        if self.mixstyle_alpha <= 0:
            raise ValueError(f"mixstyle_alpha must be positive, got {self.mixstyle_alpha}")
        if self.n_mels // self.transformer_pool[0] != self.d_model:
            raise ValueError(
                f"n_mels {self.n_mels} / freq pool {self.transformer_pool[0]} must equal d_model {self.d_model}"
            )

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        values = dict(values)
        for key in ("conv_channels", "transformer_pool"):
            if key in values:
                values[key] = tuple(values[key])
        if "conv_pools" in values:
            values["conv_pools"] = tuple(tuple(p) for p in values["conv_pools"])
        return cls(**values)

"""AugmentConfig: which train-only augmentations run, and how strongly (torch-free).

The augmentations themselves live in ``augment.py``; these settings are apart so that the
recipes and the command line can name them without importing torch.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    noise_prob: float = 0.5
    noise_snr_db: tuple[float, float] = (10.0, 40.0)
    warp_prob: float = 0.5
    warp_range: tuple[float, float] = (0.9, 1.1)
    freq_masks: int = 2
    freq_mask_bins: int = 16
    time_masks: int = 2
    time_mask_frames: int = 40
    mixup_alpha: float = 0.0  # 0 disables mixup
    reverb_prob: float = 0.0
    reverb_rt60_s: tuple[float, float] = (0.2, 0.8)
    bandlimit_prob: float = 0.0
    bandlimit_rates: tuple[int, ...] = (8_000, 16_000)
    speed_prob: float = 0.0
    speed_range: tuple[float, float] = (0.9, 1.1)
    speed_keep_tempo: bool = False  # stretch the frames back: frequencies scaled, tempo kept
    tempo_prob: float = 0.0  # log-mel frames stretched in time: speaking rate varies, pitch does not
    tempo_range: tuple[float, float] = (0.8, 1.2)
    pitch_prob: float = 0.0  # harmonics moved, envelope kept: pitch varies, formants and tempo do not
    pitch_range: tuple[float, float] = (0.85, 1.18)  # frequency factor (about -2.8 to +2.9 semitones)

    @classmethod
    def off(cls) -> "AugmentConfig":
        return cls(noise_prob=0.0, warp_prob=0.0, freq_masks=0, time_masks=0, mixup_alpha=0.0,
                   reverb_prob=0.0, bandlimit_prob=0.0, speed_prob=0.0, tempo_prob=0.0, pitch_prob=0.0)

    @property
    def touches_waveform(self) -> bool:
        return (self.noise_prob > 0 or self.reverb_prob > 0 or self.bandlimit_prob > 0 or self.speed_prob > 0
                or self.pitch_prob > 0)

    @classmethod
    def from_dict(cls, values: dict) -> "AugmentConfig":
        values = dict(values)
        for key in ("noise_snr_db", "warp_range", "reverb_rt60_s", "bandlimit_rates", "speed_range", "tempo_range",
                    "pitch_range"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

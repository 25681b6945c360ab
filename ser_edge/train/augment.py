"""Train-only augmentation, all switchable and driven by one seeded generator.

* Speed perturbation (optional, off by default): the waveform played faster or slower by a
  random factor (linear interpolation), which scales every frequency, formants and pitch
  alike, and the tempo: a cheap simulation of a new speaker, exact in frequency where the
  log-mel warp below is only approximate. The window keeps its length (zero-filled tail
  when faster, cut when slower). With ``speed_keep_tempo`` the log-mel frames are then
  stretched back in time, so frequencies are scaled but the speaking rate (itself an
  emotion cue) is kept: a pitch-and-formant shift without tempo change.
* AWGN: white Gaussian noise added to the waveform at a random SNR, then the edge
  front-end recomputes the log-mel (the same function as inference).
* Reverberation (optional, off by default): the waveform convolved with a synthetic room
  impulse response (exponentially decaying noise, random RT60).
* Band-limiting (optional, off by default): the waveform downsampled to 8 or 16 kHz and
  back, as a phone line or a cheap microphone delivers it.
* Pitch shift that keeps the formants (optional, off by default): each frame's log power
  spectrum is split by cepstral liftering into a smooth envelope (formants, vocal tract)
  and a fine structure (the harmonics of the pitch); the fine structure is moved along the
  frequency axis by a random factor and put back on the unchanged envelope. Pitch varies
  while formants and tempo stay: the speaker's voice source changes, not the vocal tract.
  It acts on the magnitude spectrum only (the features keep no phase).
* Tempo perturbation (optional, off by default): the log-mel frames stretched in time by a
  random factor, so the speaking rate varies while pitch and formants stay.
* Frequency warp: the log-mel's mel axis is stretched by a random factor, a cheap stand-in
  for vocal-tract-length perturbation (it simulates speakers the training set lacks).
* SpecAugment: frequency and time masks on the standardised log-mel (masked to 0, the
  training mean).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from ser_edge.edge_runtime.features import FeatureConfig, log_mel, mel_db, power_spectrogram
from ser_edge.train.augment_config import AugmentConfig


def add_noise(waves: np.ndarray, snr_db: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise at ``snr_db`` (per row) relative to each row's power."""
    power = np.mean(np.square(waves, dtype=np.float64), axis=1, keepdims=True)
    noise_power = power / (10.0 ** (snr_db[:, None] / 10.0))
    noise = rng.standard_normal(waves.shape).astype(np.float32) * np.sqrt(noise_power).astype(np.float32)
    return waves + noise


RIR_DECAY_DB = 60.0  # RT60: time for the impulse response to decay by 60 dB


def synthetic_rir(rt60_s: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Exponentially decaying Gaussian noise with a direct-path impulse: a cheap room."""
    n = max(2, int(rt60_s * sample_rate))
    t = np.arange(n) / sample_rate
    rir = rng.standard_normal(n) * 10.0 ** (-RIR_DECAY_DB / 20.0 * t / rt60_s)
    rir[0] = 1.0
    return (rir / np.sqrt(np.sum(rir**2))).astype(np.float32)


def reverberate(wave: np.ndarray, rir: np.ndarray) -> np.ndarray:
    n = len(wave) + len(rir) - 1
    size = 1 << (n - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(wave, size) * np.fft.rfft(rir, size), size)[: len(wave)]
    return wet.astype(np.float32)


def band_limit(wave: np.ndarray, rate: int, narrow_rate: int) -> np.ndarray:
    from ser_edge.edge_runtime.audio import RESAMPLE_KAISER_BETA
    from ser_edge.edge_runtime.resample import resample_poly

    narrow = resample_poly(wave, narrow_rate, rate, RESAMPLE_KAISER_BETA)
    return resample_poly(narrow, rate, narrow_rate, RESAMPLE_KAISER_BETA)[: len(wave)]


def speed_perturb(wave: np.ndarray, factor: float) -> np.ndarray:
    """``wave`` played ``factor`` times faster, same length: ``out[t] = wave[t * factor]``."""
    positions = np.arange(len(wave), dtype=np.float64) * factor
    return np.interp(positions, np.arange(len(wave)), wave, right=0.0).astype(np.float32)


def _read_last_axis(values: np.ndarray, source: np.ndarray) -> np.ndarray:
    """``values`` read at fractional positions ``source`` (in ``[0, n - 1]``) of its last axis,
    by linear interpolation between the two neighbouring entries."""
    left = np.minimum(np.floor(source).astype(np.intp), values.shape[-1] - 2)
    weight = (source - left).astype(np.float32)
    return values[..., left] * (1.0 - weight) + values[..., left + 1] * weight


# Cepstral cut-off between a spectrum's envelope and its harmonics: quefrencies up to 1.2 ms
# are the envelope. Pitch periods are longer (2.5 ms and more for voices below 400 Hz), so
# the harmonics stay in the fine structure and the formants (about 1 kHz apart) in the
# envelope.
ENVELOPE_LIFTER_S = 1.2e-3


@functools.lru_cache(maxsize=4)
def _lifter_bases(config: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """(analysis, synthesis) cosine bases: ``envelope = log_power @ analysis @ synthesis``.

    The same as taking the real cepstrum (``irfft`` of the log power over ``n_fft``), zeroing
    quefrencies above ``ENVELOPE_LIFTER_S`` (and their mirror), and ``rfft`` back, as two
    small products instead of two FFTs per frame.
    """
    cut = int(round(ENVELOPE_LIFTER_S * config.sample_rate))
    bins, quefrencies = np.arange(config.n_bins), np.arange(cut + 1)
    cosines = np.cos(2.0 * np.pi * np.outer(bins, quefrencies) / config.n_fft)  # (n_bins, cut + 1)
    bin_weight = np.full(config.n_bins, 2.0)  # the one-sided spectrum counts inner bins twice
    bin_weight[[0, -1]] = 1.0
    quefrency_weight = np.full(cut + 1, 2.0)  # quefrency q and its mirror n_fft - q
    quefrency_weight[0] = 1.0
    analysis = (cosines * bin_weight[:, None] / config.n_fft).astype(np.float32)
    synthesis = (cosines * quefrency_weight[None, :]).T.astype(np.float32)
    return analysis, synthesis


def pitch_shift_power(power: np.ndarray, factor: float, config: FeatureConfig) -> np.ndarray:
    """``(frames, n_bins)`` power spectrum with its harmonics moved ``factor`` times up in
    frequency and its envelope kept (float32, a new array).

    ``log power = envelope + fine``, the envelope being the real cepstrum's quefrencies up to
    ``ENVELOPE_LIFTER_S``. The fine structure is read at ``bin / factor`` (linear
    interpolation; bins past the top read the top bin) and added back to the envelope.
    """
    analysis, synthesis = _lifter_bases(config)
    log_power = np.log(np.maximum(power, np.float32(config.amin), dtype=np.float32))
    envelope = (log_power @ analysis) @ synthesis
    fine = log_power - envelope
    envelope += _read_last_axis(fine, np.minimum(np.arange(config.n_bins) / factor, config.n_bins - 1))
    return np.exp(envelope, out=envelope)


def pitch_shift_log_mel(wave: np.ndarray, factor: float, config: FeatureConfig) -> np.ndarray:
    """Log-mel ``(n_mels, frames)`` of ``wave`` with its pitch moved by ``factor``, formants kept."""
    power = power_spectrogram(wave[None], config)[0]
    return mel_db(pitch_shift_power(power, factor, config)[None], config)[0]


def stretch_frames(features: np.ndarray, rate: float, floor_db: float) -> np.ndarray:
    """The log-mel ``(n_mels, frames)`` played ``rate`` times faster: frame ``j`` of the
    result is frame ``j * rate`` of the input (linear interpolation), frequencies unchanged.

    Faster (``rate > 1``) leaves a tail that no input frame reaches; it is ``floor_db``, the
    front-end's value for silence. Slower cuts the input's end.
    """
    n_frames = features.shape[-1]
    source = np.arange(n_frames, dtype=np.float64) * rate
    inside = source <= n_frames - 1
    out = np.full_like(features, floor_db)
    out[:, inside] = _read_last_axis(features, source[inside])
    return out


def tempo_perturb(features: np.ndarray, aug: "AugmentConfig", rng: np.random.Generator, floor_db: float) -> np.ndarray:
    """Change the tempo of some rows by factors in ``tempo_range`` (in place, returned):
    speaking rate varies, pitch and formants do not."""
    chosen = np.flatnonzero(rng.random(len(features)) < aug.tempo_prob)
    for row, rate in zip(chosen, rng.uniform(*aug.tempo_range, size=len(chosen)), strict=True):
        features[row] = stretch_frames(features[row], rate, floor_db)
    return features


def waveform_log_mel(
    waves: np.ndarray, config: FeatureConfig, aug: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Speed / reverb / band-limit / AWGN on some rows' waveforms, then their log-mel (with the
    pitch shifted on some); return (row indices, new log-mel)."""
    n = len(waves)
    reverb = rng.random(n) < aug.reverb_prob
    narrow = rng.random(n) < aug.bandlimit_prob
    noise = rng.random(n) < aug.noise_prob
    # Drawn only when enabled, so the random stream (and every result) of recipes without
    # speed perturbation stays what it was.
    speed = rng.random(n) < aug.speed_prob if aug.speed_prob > 0 else np.zeros(n, bool)
    pitch = rng.random(n) < aug.pitch_prob if aug.pitch_prob > 0 else np.zeros(n, bool)
    chosen = np.flatnonzero(reverb | narrow | noise | speed | pitch)
    if len(chosen) == 0:
        return chosen, np.empty((0, config.n_mels, config.n_frames), np.float32)
    out = np.array(waves[chosen], dtype=np.float32)
    factors = np.ones(len(chosen))
    for i, row in enumerate(chosen):
        if speed[row]:
            factors[i] = rng.uniform(*aug.speed_range)
            out[i] = speed_perturb(out[i], factors[i])
        if reverb[row]:
            out[i] = reverberate(out[i], synthetic_rir(rng.uniform(*aug.reverb_rt60_s), config.sample_rate, rng))
        if narrow[row]:
            out[i] = band_limit(out[i], config.sample_rate, int(rng.choice(aug.bandlimit_rates)))
    noisy = noise[chosen]
    if noisy.any():
        snr = rng.uniform(*aug.noise_snr_db, size=int(noisy.sum()))
        out[noisy] = add_noise(out[noisy], snr, rng)
    shifted = pitch[chosen]
    features = np.empty((len(chosen), config.n_mels, 1 + out.shape[1] // config.hop_length), np.float32)
    if not shifted.all():
        features[~shifted] = log_mel(out[~shifted], config)
    for i, pitch_factor in zip(np.flatnonzero(shifted), rng.uniform(*aug.pitch_range, size=int(shifted.sum())), strict=True):
        features[i] = pitch_shift_log_mel(out[i], pitch_factor, config)
    if aug.speed_keep_tempo:
        for i in np.flatnonzero(speed[chosen]):
            # The speed change put original time t at t / factor: play it 1 / factor as fast.
            features[i] = stretch_frames(features[i], 1.0 / factors[i], -config.top_db)
    return chosen, features


def freq_warp(features: np.ndarray, aug: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Stretch the mel axis of some rows by factors in ``warp_range`` (in place, returned)."""
    chosen = np.flatnonzero(rng.random(len(features)) < aug.warp_prob)
    n_mels = features.shape[1]
    for row, alpha in zip(chosen, rng.uniform(*aug.warp_range, size=len(chosen)), strict=True):
        size = max(2, int(round(n_mels * alpha)))
        stretched = F.interpolate(
            torch.from_numpy(np.ascontiguousarray(features[row]))[None, None],
            size=(size, features.shape[2]),
            mode="bilinear",
            align_corners=False,
        )[0, 0].numpy()
        if size >= n_mels:
            features[row] = stretched[:n_mels]
        else:
            features[row, :size] = stretched
            features[row, size:] = stretched[-1:]
    return features


def spec_augment(batch: torch.Tensor, aug: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Frequency and time masks on ``(B, 1, n_mels, T)``, vectorised over the batch."""
    b, _, n_mels, n_frames = batch.shape
    keep = torch.ones(b, 1, n_mels, n_frames, dtype=torch.bool)
    for count, max_width, axis, size in (
        (aug.freq_masks, aug.freq_mask_bins, 2, n_mels),
        (aug.time_masks, aug.time_mask_frames, 3, n_frames),
    ):
        for _ in range(count):
            width = torch.randint(0, max_width + 1, (b,), generator=generator)
            start = (torch.rand(b, generator=generator) * (size - width + 1)).long()
            pos = torch.arange(size)
            band = (pos[None, :] >= start[:, None]) & (pos[None, :] < (start + width)[:, None])
            shape = (b, 1, size, 1) if axis == 2 else (b, 1, 1, size)
            keep &= ~band.view(shape)
    return batch * keep

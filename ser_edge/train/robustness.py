"""Corruptions for robustness evaluation: white noise, babble, band-limiting, lossy codecs.

Each corruption is a ``transform(samples, sample_rate) -> (samples, sample_rate)`` that
``ser_edge.train.evaluate.evaluate_onnx`` applies to every decoded clip before the edge
runtime classifies it. Everything is seeded, so a table can be reproduced exactly.
"""

from __future__ import annotations

import dataclasses
import io
import zlib
from typing import Callable, Sequence

import numpy as np
import soundfile as sf

from ser_edge.edge_runtime.audio import RESAMPLE_KAISER_BETA, load_audio
from ser_edge.edge_runtime.resample import resample_poly

BABBLE_TALKERS = 6  # clips summed into one babble signal
Transform = Callable[[np.ndarray, int], tuple[np.ndarray, int]]


def _rng(seed: int, samples: np.ndarray) -> np.random.Generator:
    """A generator seeded by the clip's content, so a clip's corruption does not depend on order."""
    return np.random.default_rng([seed, zlib.crc32(samples[:4096].tobytes())])


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    clean_power = np.mean(np.square(clean, dtype=np.float64))
    noise_power = max(np.mean(np.square(noise, dtype=np.float64)), 1e-20)
    gain = np.sqrt(clean_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (clean + gain * noise).astype(np.float32)


def white_noise(snr_db: float, seed: int = 0) -> Transform:
    def transform(samples: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
        noise = _rng(seed, samples).standard_normal(len(samples)).astype(np.float32)
        return mix_at_snr(samples, noise, snr_db), rate

    return transform


def babble_noise(snr_db: float, pool: Sequence[str], seed: int = 0) -> Transform:
    """Sum of ``BABBLE_TALKERS`` other clips (looped to length) as speech-like noise."""
    cache: dict[str, np.ndarray] = {}

    def clip(path: str) -> np.ndarray:
        if path not in cache:
            cache[path] = load_audio(path).samples
        return cache[path]

    def transform(samples: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
        rng = _rng(seed, samples)
        noise = np.zeros(len(samples), np.float32)
        for index in rng.choice(len(pool), size=min(BABBLE_TALKERS, len(pool)), replace=False):
            talker = clip(pool[index])
            talker = talker / (np.sqrt(np.mean(talker**2)) + 1e-9)
            start = rng.integers(len(talker))
            noise += np.resize(np.roll(talker, -start), len(samples))
        return mix_at_snr(samples, noise, snr_db), rate

    return transform


def band_limit(target_rate: int) -> Transform:
    """Downsample to ``target_rate`` (anti-aliased): what a phone line or cheap mic delivers."""

    def transform(samples: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
        return resample_poly(samples, target_rate, rate, RESAMPLE_KAISER_BETA), target_rate

    return transform


@dataclasses.dataclass(frozen=True)
class Codec:
    """A lossy encoder of libsndfile, set by its 0-1 compression level (1 = smallest file).

    libsndfile maps the level to the encoder's bitrate: for Opus a target of about
    6 + 250 x (1 - level) kbps per channel, spent variably (less on silence); for MP3 (LAME,
    constant bitrate) steps of its bitrate table. ``nominal_kbps`` names that target; the
    bitrate measured on the clips is reported next to each result.
    """

    format: str
    subtype: str
    compression_level: float
    nominal_kbps: int
    bitrate_mode: str | None = None


CODECS = {
    "opus-32k": Codec("OGG", "OPUS", 0.896, 32),  # voice calls (WebRTC's default range)
    "opus-16k": Codec("OGG", "OPUS", 0.96, 16),
    "mp3-96k": Codec("MP3", "MPEG_LAYER_III", 0.8, 96, "CONSTANT"),
    "mp3-32k": Codec("MP3", "MPEG_LAYER_III", 0.99, 32, "CONSTANT"),
}
BITS_PER_BYTE = 8


class CodecTransform:
    """Encode with ``codec`` in memory and decode again; counts bytes to report the bitrate."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.encoded_bytes = 0
        self.seconds = 0.0

    def __call__(self, samples: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
        buffer = io.BytesIO()
        extra = {"bitrate_mode": self.codec.bitrate_mode} if self.codec.bitrate_mode else {}
        sf.write(buffer, samples, rate, format=self.codec.format, subtype=self.codec.subtype,
                 compression_level=self.codec.compression_level, **extra)
        self.encoded_bytes += buffer.tell()
        self.seconds += len(samples) / rate
        buffer.seek(0)
        decoded, decoded_rate = sf.read(buffer, dtype="float32")  # mono in, mono (n,) out
        return decoded, decoded_rate

    @property
    def kbps(self) -> float:
        return self.encoded_bytes * BITS_PER_BYTE / self.seconds / 1000 if self.seconds else 0.0


@dataclasses.dataclass(frozen=True)
class Condition:
    name: str
    transform: Transform | None


def check_codecs(names: Sequence[str]) -> None:
    """ValueError naming any of ``names`` that is not in ``CODECS``."""
    unknown = sorted(set(names) - set(CODECS))
    if unknown:
        raise ValueError(f"unknown codecs {unknown}; known: {sorted(CODECS)}")


def conditions(snrs_db: Sequence[float], rates: Sequence[int], babble_pool: Sequence[str], seed: int = 0,
               codecs: Sequence[str] = ()) -> list[Condition]:
    """``codecs``: names from ``CODECS``; their conditions' transforms are ``CodecTransform``s."""
    check_codecs(codecs)
    out = [Condition("clean", None)]
    out += [Condition(f"white {snr:g} dB", white_noise(snr, seed)) for snr in snrs_db]
    if babble_pool:
        out += [Condition(f"babble {snr:g} dB", babble_noise(snr, babble_pool, seed)) for snr in snrs_db]
    out += [Condition(f"{rate / 1000:g} kHz band-limited", band_limit(rate)) for rate in rates]
    out += [Condition(name, CodecTransform(CODECS[name])) for name in codecs]
    return out


# Colours (matplotlib's C0-C9 minus the two noise curves' C0/C1 and grey C7) and line styles
# of the level lines in ``plot``.
LEVEL_COLORS = (2, 3, 4, 5, 6, 8, 9)
LEVEL_STYLES = (":", "-.", "--")


def plot(results: dict[str, float], snrs_db: Sequence[float], path: str) -> None:
    """Accuracy against SNR for the noises, and a level line (accuracy in the legend) for
    clean input, each band limit and each codec; the legend sits beside the axes."""
    from ser_edge.train.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for kind in ("white", "babble"):
        xs = [snr for snr in snrs_db if f"{kind} {snr:g} dB" in results]
        if xs:
            ax.plot(xs, [results[f"{kind} {snr:g} dB"] for snr in xs], marker="o", label=f"{kind} noise")
    levels = [(name, value) for name, value in results.items() if name == "clean" or "band-limited" in name or name in CODECS]
    # Line styles cycle within a colour so that equal accuracies (a codec at the clean level) stay visible.
    for k, (name, value) in enumerate(levels):
        color = "black" if name == "clean" else f"C{LEVEL_COLORS[k % len(LEVEL_COLORS)]}"
        style = "-" if name == "clean" else LEVEL_STYLES[k % len(LEVEL_STYLES)]
        ax.axhline(value, color=color, linestyle=style, linewidth=1.2, label=f"{name} ({value:.1%})")
    ax.set_xlabel("SNR (dB)")
    ax.set_ylabel("accuracy")
    ax.invert_xaxis()
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""Audio pre-processing run inside the server: pure numpy functions, unit-tested.

What `audio_preprocess` does to each item of a request, in order:

1. **Validate the sample rate**: 8,000..48,000 Hz, else INVALID_ARG naming SAMPLE_RATE[i].
2. **Validate the PCM** (AUDIO[i], float32 mono, nominally in [-1, 1]):
   - no samples -> INVALID_ARG;
   - NaN or +-Inf -> INVALID_ARG (the first bad position is named);
   - longer than the pipeline's `max_seconds` -> INVALID_ARG stating the limit;
   - peak within (1, 1.5]: clipped to [-1, 1] -- the overshoot float mixing and
     resampling chains produce; documented, not an error;
   - peak beyond 1.5 -> INVALID_ARG; when every sample is a whole number (int16 PCM sent
     as float) the message says to divide by 32768.
3. **Resample** to the model's rate with a band-limited polyphase filter (Kaiser-windowed
   sinc, the design `scipy.signal.resample_poly` uses, so the two agree to float precision).
4. **Features**, exactly as the checkpoint's Hugging Face feature extractor computes them:
   - Whisper: a fixed window (the model's positional table; a clip longer than it keeps
     its loudest window, a shorter one is padded with silence), then the 80-bin log-mel
     spectrogram (`WhisperFeatureExtractor`);
   - Wav2Vec2 / HuBERT / WavLM: raw waveform, zero-mean unit-variance per clip
     (`Wav2Vec2FeatureExtractor`), padded to the longest clip of the request with an
     attention mask. Clips shorter than the convolutional front end's receptive field are
     padded with silence up to it, so a 1-sample clip gets an answer (that of silence).

Everything here imports only numpy: it runs in Triton's Python stub.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mmserve.pipelines import ATTENTION_MASK, AUDIO, INPUT_FEATURES, INPUT_VALUES, SAMPLE_RATE
from mmserve.serving.runtime import InputError, Outputs, PythonStep, input_array, model_folder, model_parameters

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 48_000
# Peaks up to this are float overshoot (mixing, resampling) and are clipped; beyond it the
# caller has scaled the signal wrongly and is told so.
CLIP_LIMIT = 1.5
INT16_SCALE = 32768.0
DEFAULT_MAX_SECONDS = 30.0

WHISPER = "whisper"  # log-mel features in a fixed window
WAVEFORM = "waveform"  # normalised raw samples + attention mask (Wav2Vec2 family)


# --- validation ---------------------------------------------------------------------


def check_sample_rate(value: Any, index: int, name: str = SAMPLE_RATE.name) -> int:
    rate = int(np.asarray(value).reshape(-1)[0]) if np.asarray(value).size else None
    if rate is None:
        raise InputError(f"{name}[{index}] is empty; send the clip's sample rate in Hz")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InputError(
            f"{name}[{index}] is {rate} Hz; supported rates are {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz "
            "(resample on the client, or check the value is in Hz)"
        )
    return rate


def check_pcm(
    samples: np.ndarray, index: int, rate: int, max_seconds: float, name: str = AUDIO.name
) -> np.ndarray:
    """One clip as float32 mono in [-1, 1], or an InputError naming what is wrong with it."""
    x = np.asarray(samples)
    if x.ndim != 1:
        raise InputError(f"{name}[{index}] has shape {list(x.shape)}; send mono PCM as one row of samples")
    if x.size == 0:
        raise InputError(f"{name}[{index}] is empty; send at least one sample")
    seconds = x.size / rate
    if seconds > max_seconds:
        raise InputError(
            f"{name}[{index}] is {seconds:.1f} s long ({x.size} samples at {rate} Hz); this pipeline accepts "
            f"at most {max_seconds:g} s per clip: split longer audio"
        )
    x = x.astype(np.float32, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        position = int(np.argmin(finite))
        raise InputError(
            f"{name}[{index}] has NaN or infinite samples (the first at sample {position}); "
            "send finite float PCM in [-1, 1]"
        )
    peak = float(np.max(np.abs(x)))
    if peak <= 1.0:
        return x
    if peak <= CLIP_LIMIT:
        return np.clip(x, -1.0, 1.0)
    if peak <= INT16_SCALE and np.array_equal(x, np.round(x)):
        raise InputError(
            f"{name}[{index}] looks like int16 PCM sent as float (whole numbers up to {peak:.0f}); "
            f"divide by {INT16_SCALE:.0f} to send float PCM in [-1, 1]"
        )
    raise InputError(
        f"{name}[{index}] has samples beyond [-1, 1] (peak {peak:.3g}); send float PCM scaled to [-1, 1]"
    )


# --- resampling ---------------------------------------------------------------------


@lru_cache(maxsize=64)
def lowpass_filter(up: int, down: int, beta: float = 5.0) -> np.ndarray:
    """Kaiser-windowed sinc low-pass for an up/down polyphase resampler, gain `up`.

    Cut-off at the lower of the two Nyquist rates, 10 zero crossings each side: the
    filter `scipy.signal.resample_poly` designs with its default window ('kaiser', 5.0).
    """
    max_rate = max(up, down)
    half_len = 10 * max_rate
    taps = 2 * half_len + 1
    cutoff = 1.0 / max_rate
    m = np.arange(taps) - half_len
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(taps, beta)
    h /= h.sum()  # unity gain at DC
    h *= up
    h.setflags(write=False)
    return h


@lru_cache(maxsize=64)
def _polyphase_matrix(up: int, down: int) -> tuple[np.ndarray, int]:
    """The resampler as one matrix: output block q (outputs q*up .. q*up+up-1) = window_q @ matrix.

    window_q is the input from offset + q*down, `matrix.shape[0]` samples long; column r
    holds phase r's taps, placed where that phase's first input falls. Returns (matrix, offset).
    """
    h = lowpass_filter(up, down)
    half_len = (len(h) - 1) // 2
    n_taps = -(-len(h) // up) + 1  # input samples one output can touch
    t = np.arange(up) * down + half_len  # each phase's filter end in the upsampled signal
    first = -((len(h) - 1 - t) // up)  # ceil((t - len(h) + 1) / up): first input index per phase
    k = t[:, None] - (first[:, None] + np.arange(n_taps)[None, :]) * up
    taps = np.where((k >= 0) & (k < len(h)), h[np.clip(k, 0, len(h) - 1)], 0.0)
    offset = int(first.min())
    matrix = np.zeros((int(first.max()) - offset + n_taps, up))
    for r in range(up):
        matrix[first[r] - offset : first[r] - offset + n_taps, r] = taps[r]
    matrix.setflags(write=False)
    return matrix, offset


def resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """Rational resampling by up/down with a zero-phase polyphase FIR (float64 accumulation).

    Output length ceil(len(x) * up / down); output sample m sits at input time
    m * down / up, as in scipy.signal.resample_poly with its default zero padding:
    y[m] = sum_n x[n] * h[m*down + half_len - n*up]. One matrix product over strided
    windows of the input (no Python loop per phase), so short clips cost ~1 ms.
    """
    x = np.asarray(x, dtype=np.float64)
    g = math.gcd(up, down)
    up, down = up // g, down // g
    if up == down == 1:
        return x.copy()
    n_in = x.shape[0]
    n_out = -(-n_in * up // down)
    if (down + len(lowpass_filter(up, down)) // up + 2) * up > _MATRIX_BUDGET:
        return _resample_per_output(x, up, down, n_out)
    matrix, offset = _polyphase_matrix(up, down)
    width = matrix.shape[0]
    blocks = -(-n_out // up)
    left = max(0, -offset)
    right = max(0, offset + left + down * (blocks - 1) + width - (left + n_in))
    padded = np.concatenate([np.zeros(left), x, np.zeros(right)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)[offset + left :: down][:blocks]
    rows = max(1, (1 << 20) // width)  # ~8 MB of windows at a time: BLAS needs them contiguous
    out = np.empty((blocks, up))
    for start in range(0, blocks, rows):
        out[start : start + rows] = np.ascontiguousarray(windows[start : start + rows]) @ matrix
    return out.reshape(-1)[:n_out]


# Entries of the polyphase matrix (about down x up) kept per ratio. Coprime rates such as
# 47999 -> 16000 Hz would need ~6 GB; those are computed output by output instead.
_MATRIX_BUDGET = 1 << 22


def _resample_per_output(x: np.ndarray, up: int, down: int, n_out: int, chunk: int = 8192) -> np.ndarray:
    """The same sum as `resample_poly`, gathered per output sample (in chunks): memory is
    O(chunk x taps per phase) for any ratio, at a few times the matrix product's time."""
    h = lowpass_filter(up, down)
    half_len = (len(h) - 1) // 2
    n_taps = -(-len(h) // up) + 1
    y = np.empty(n_out)
    for start in range(0, n_out, chunk):
        t = np.arange(start, min(n_out, start + chunk), dtype=np.int64) * down + half_len
        n = -((len(h) - 1 - t) // up)[:, None] + np.arange(n_taps)  # the inputs each output touches
        k = t[:, None] - n * up  # and the tap each one is weighted by
        valid = (k >= 0) & (k < len(h)) & (n >= 0) & (n < x.shape[0])
        taps = np.where(valid, h[np.clip(k, 0, len(h) - 1)], 0.0)
        y[start : start + len(t)] = (taps * x[np.clip(n, 0, x.shape[0] - 1)]).sum(axis=1)
    return y


def resample(x: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """float32 clip at `orig_rate` -> float32 clip at `target_rate`."""
    if orig_rate == target_rate:
        return np.asarray(x, dtype=np.float32)
    return resample_poly(x, target_rate, orig_rate).astype(np.float32)


# --- Whisper log-mel -----------------------------------------------------------------


def _hertz_to_mel_slaney(freq: np.ndarray) -> np.ndarray:
    freq = np.asarray(freq, dtype=np.float64)
    mels = 3.0 * freq / 200.0
    min_log_hertz, min_log_mel, logstep = 1000.0, 15.0, 27.0 / np.log(6.4)
    log_region = freq >= min_log_hertz
    return np.where(log_region, min_log_mel + np.log(np.maximum(freq, 1e-10) / min_log_hertz) * logstep, mels)


def _mel_to_hertz_slaney(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    freq = 200.0 * mels / 3.0
    min_log_hertz, min_log_mel, logstep = 1000.0, 15.0, np.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hertz * np.exp(logstep * (mels - min_log_mel)), freq)


def mel_filter_bank(
    sampling_rate: int, n_fft: int, n_mels: int, min_frequency: float = 0.0, max_frequency: float = 8000.0
) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels] Slaney-scale, Slaney-normalised triangular filters (as librosa/Whisper)."""
    n_bins = n_fft // 2 + 1
    mel_points = np.linspace(_hertz_to_mel_slaney(min_frequency), _hertz_to_mel_slaney(max_frequency), n_mels + 2)
    filter_freqs = _mel_to_hertz_slaney(mel_points)
    fft_freqs = np.linspace(0, sampling_rate // 2, n_bins)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    widths = np.diff(filter_freqs)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= (2.0 / (filter_freqs[2 : n_mels + 2] - filter_freqs[:n_mels]))[None, :]
    return filters


def log_mel_spectrogram(x: np.ndarray, filters: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """Whisper's features for one padded clip: [n_mels, len(x) // hop_length] float32.

    Centred frames (reflect padding), periodic Hann window, power spectrum, mel filters,
    log10 floored at 1e-10, dynamic range limited to 8 (80 dB) below the clip's peak,
    then scaled by (x + 4) / 4.
    """
    x = np.asarray(x, dtype=np.float64)
    padded = np.pad(x, n_fft // 2, mode="reflect")
    window = np.hanning(n_fft + 1)[:-1]
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    power = np.abs(np.fft.rfft(frames * window, n=n_fft)) ** 2  # [frames, bins]
    mel = filters.astype(np.float64).T @ power.T  # [n_mels, frames]
    log_spec = np.log10(np.maximum(mel, 1e-10))[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def loudest_window(x: np.ndarray, length: int) -> np.ndarray:
    """`length` samples of `x`: the highest-energy window of a longer clip, a shorter one padded with silence."""
    if x.shape[0] == length:
        return x
    if x.shape[0] < length:
        return np.pad(x, (0, length - x.shape[0]))
    energy = np.concatenate([[0.0], np.cumsum(np.square(x, dtype=np.float64))])
    window_energy = energy[length:] - energy[:-length]
    start = int(np.argmax(window_energy))
    return x[start : start + length]


# --- Wav2Vec2-style waveform -----------------------------------------------------------


def zero_mean_unit_var(x: np.ndarray) -> np.ndarray:
    """Wav2Vec2FeatureExtractor's per-clip normalisation (float32, epsilon 1e-7)."""
    x = np.asarray(x, dtype=np.float32)
    return (x - x.mean()) / np.sqrt(x.var() + 1e-7)


# --- the feature extractors -------------------------------------------------------------


@dataclass(frozen=True)
class FeatureConfig:
    """The part of a Hugging Face preprocessor_config.json serving needs."""

    kind: str  # WHISPER | WAVEFORM
    sampling_rate: int
    # Whisper
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    window_samples: int = 480_000
    # waveform
    do_normalize: bool = True
    attention_mask: bool = True
    min_samples: int = 400  # the convolutional front end's receptive field

    @classmethod
    def from_preprocessor_config(cls, config: Mapping[str, Any], min_samples: int = 400) -> "FeatureConfig":
        kind = str(config.get("feature_extractor_type", ""))
        rate = int(config["sampling_rate"])
        if kind == "WhisperFeatureExtractor":
            return cls(
                kind=WHISPER,
                sampling_rate=rate,
                n_fft=int(config.get("n_fft", 400)),
                hop_length=int(config.get("hop_length", 160)),
                n_mels=int(config.get("feature_size", 80)),
                window_samples=int(config.get("n_samples", int(config.get("chunk_length", 30)) * rate)),
            )
        if kind == "Wav2Vec2FeatureExtractor":
            if int(config.get("feature_size", 1)) != 1:
                raise ValueError(f"a waveform feature extractor must have feature_size 1, got {config['feature_size']}")
            return cls(
                kind=WAVEFORM,
                sampling_rate=rate,
                do_normalize=bool(config.get("do_normalize", True)),
                attention_mask=bool(config.get("return_attention_mask", True)),
                min_samples=min_samples,
            )
        raise ValueError(
            f"feature extractor {kind or '(unnamed)'} is not supported; "
            "supported: WhisperFeatureExtractor, Wav2Vec2FeatureExtractor"
        )

    @classmethod
    def from_file(cls, path: Path, min_samples: int = 400) -> "FeatureConfig":
        return cls.from_preprocessor_config(json.loads(Path(path).read_text(encoding="utf-8")), min_samples)

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.kind == WHISPER:
            return (INPUT_FEATURES,)
        return (INPUT_VALUES, ATTENTION_MASK) if self.attention_mask else (INPUT_VALUES,)


class FeatureExtractor:
    """Clips at the model's rate -> the encoder's inputs, as the HF feature extractor makes them."""

    def __init__(self, config: FeatureConfig):
        self.config = config
        if config.kind == WHISPER:
            self.filters = mel_filter_bank(config.sampling_rate, config.n_fft, config.n_mels)

    def __call__(self, clips: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        if self.config.kind == WHISPER:
            return {INPUT_FEATURES: self.whisper(clips)}
        return self.waveform(clips)

    def whisper(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        c = self.config
        return np.stack(
            [log_mel_spectrogram(loudest_window(x, c.window_samples), self.filters, c.n_fft, c.hop_length) for x in clips]
        )

    def waveform(self, clips: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        c = self.config
        clips = [np.pad(x, (0, max(0, c.min_samples - x.shape[0]))).astype(np.float32) for x in clips]
        width = max(x.shape[0] for x in clips)
        values = np.zeros((len(clips), width), dtype=np.float32)
        mask = np.zeros((len(clips), width), dtype=np.int64)
        for row, x in enumerate(clips):
            values[row, : x.shape[0]] = zero_mean_unit_var(x) if c.do_normalize else x
            mask[row, : x.shape[0]] = 1
        out = {INPUT_VALUES: values}
        if c.attention_mask:
            out[ATTENTION_MASK] = mask
        return out


class AudioPreprocessor:
    """A request's AUDIO [N, L] + SAMPLE_RATE [N, 1] -> the encoder's inputs for its N clips."""

    def __init__(self, config: FeatureConfig, max_seconds: float = DEFAULT_MAX_SECONDS):
        if max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive, got {max_seconds}")
        self.config = config
        self.max_seconds = max_seconds
        self.features = FeatureExtractor(config)

    def clips(self, audio: np.ndarray, rates: np.ndarray) -> list[np.ndarray]:
        """Validated clips resampled to the model's rate."""
        audio = np.asarray(audio)
        rates = np.asarray(rates)
        if audio.ndim == 1:  # a caller that already dropped the batch axis
            audio = audio[None, :]
        if audio.ndim != 2:
            raise InputError(f"AUDIO has shape {list(audio.shape)}; send [batch, samples] mono float PCM")
        if rates.reshape(len(rates), -1).shape[0] != audio.shape[0]:
            raise InputError(
                f"SAMPLE_RATE has {rates.shape[0]} rows but AUDIO has {audio.shape[0]}; send one rate per clip"
            )
        rates = rates.reshape(audio.shape[0], -1)
        clips = []
        for index in range(audio.shape[0]):
            rate = check_sample_rate(rates[index], index)
            x = check_pcm(audio[index], index, rate, self.max_seconds)
            clips.append(resample(x, rate, self.config.sampling_rate))
        return clips

    def __call__(self, audio: np.ndarray, rates: np.ndarray) -> dict[str, np.ndarray]:
        return self.features(self.clips(audio, rates))


# ---- the Triton Python model (the exported model.py is one line importing it) ----


class AudioPreprocessModel(PythonStep):
    """`audio_preprocess`: AUDIO + SAMPLE_RATE -> a speech encoder's features, as its training made them.

    Shared by every speech pipeline whose feature extractor (preprocessor_config.json) and
    limits are the same (audio_classify, audio_embed, ...). The rules are this module's
    docstring; bad items are INVALID_ARG naming AUDIO[i] or SAMPLE_RATE[i], and never affect
    other requests.
    """

    def initialize(self, args: dict[str, str]) -> None:
        parameters = model_parameters(args)
        config = FeatureConfig.from_file(
            model_folder(args) / parameters.get("preprocessor_file", "preprocessor_config.json"),
            min_samples=int(parameters.get("min_samples", "400")),
        )
        self.preprocess = AudioPreprocessor(config, max_seconds=float(parameters["max_seconds"]))

    def answer(self, request: Any) -> Outputs:
        return self.preprocess(input_array(request, AUDIO.name), input_array(request, SAMPLE_RATE.name))

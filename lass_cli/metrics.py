"""Separation metrics of one source: BSS Eval v4 SDR (museval), SI-SDR, SI-SDRi, plain SDR.

``museval_sdr`` is the paper's measure: museval's BSS Eval v4 with one 512-tap distortion filter
for the whole signal, SDR in frames of one second at the signal's rate (window = hop = rate: 22050
samples at 22.05 kHz, 44100 at 44.1 kHz), NaN for frames where the reference or the estimate is
silent, and the median over the other frames. ``sdr`` is the plain whole-signal energy ratio
``10 log10(|s|^2 / |s - s_hat|^2)`` that ``lass separate --reference`` reports.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


class MissingDependency(RuntimeError):
    """An optional package a command needs is not installed."""


def sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference, estimate = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    error = np.sum((reference - estimate) ** 2)
    return float(10 * np.log10((np.sum(reference**2) + _EPS) / (error + _EPS)))


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SDR in dB: both signals made zero-mean, the reference scaled optimally."""
    reference = np.asarray(reference, np.float64) - np.mean(reference)
    estimate = np.asarray(estimate, np.float64) - np.mean(estimate)
    scale = np.dot(estimate, reference) / (np.dot(reference, reference) + _EPS)
    target = scale * reference
    return float(10 * np.log10((np.sum(target**2) + _EPS) / (np.sum((estimate - target) ** 2) + _EPS)))


def si_sdr_improvement(reference: np.ndarray, estimate: np.ndarray, mixture: np.ndarray) -> float:
    """SI-SDR of the estimate minus SI-SDR of the mixture itself, against the same reference."""
    return si_sdr(reference, estimate) - si_sdr(reference, mixture)


def museval_frames(reference: np.ndarray, estimate: np.ndarray, rate: int) -> np.ndarray:
    """museval's BSS Eval v4 SDR of each 1 s frame (NaN where reference or estimate is silent)."""
    try:
        import museval
    except ImportError:  # pragma: no cover - museval is in the eval extra
        raise MissingDependency("SDR needs museval: pip install 'lass-cli[eval]'") from None
    reference = np.asarray(reference, np.float64)[None, :, None]
    estimate = np.asarray(estimate, np.float64)[None, :, None]
    return museval.evaluate(reference, estimate, win=rate, hop=rate)[0][0]


def museval_sdr(reference: np.ndarray, estimate: np.ndarray, rate: int) -> float:
    """Median over 1 s frames of museval's BSS Eval v4 SDR (NaN if every frame is silent)."""
    frames = museval_frames(reference, estimate, rate)
    finite = frames[np.isfinite(frames)]
    return float(np.median(finite)) if len(finite) else float("nan")

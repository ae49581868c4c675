"""Separation metrics on single signals: SI-SDR (Le Roux et al., 2019) and whole-signal SDR.

``sdr`` here is the plain energy ratio ``10 log10(|s|^2 / |s - s_hat|^2)`` over the whole signal,
not BSS Eval v4 (museval), which the evaluation protocol uses.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


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

"""One layer of one image from its ensemble: the consensus mask, uncertainty and agreement.

``ensemble_consensus(prob [E,H,W], sampler_cfg) -> LayerRecord`` is the reference rule of the
sequential segmenter: threshold each member, drop near-empty members, take the medoid (or the
pixel vote) of the survivors, keep their per-pixel variance as the uncertainty.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sas_model.config import SamplerConfig


@dataclass
class LayerRecord:
    """One predicted layer of one image.

    ``mask bool[H,W]`` (the consensus), ``uncertainty float32[H,W]`` (in [0, 0.25]: the survivors'
    per-pixel variance, or ``p(1-p)`` of a single member), ``agreement float32[H,W]`` (fraction of all
    members voting foreground), ``samples bool[E,H,W]`` (thresholded members), ``kept bool[E]`` (not
    dropped as near-empty).
    """

    mask: np.ndarray
    uncertainty: np.ndarray
    agreement: np.ndarray
    samples: np.ndarray
    kept: np.ndarray

    def replace(self, **changes: np.ndarray) -> LayerRecord:
        return dataclasses.replace(self, **changes)


def ensemble_consensus(prob: np.ndarray, scfg: SamplerConfig) -> LayerRecord:
    """One image's ensemble ``float [E,H,W]`` (foreground probabilities) → :class:`LayerRecord`."""
    samples = prob > scfg.threshold
    kept = samples.mean(axis=(1, 2)) >= scfg.min_foreground
    survivors = samples[kept].astype(np.float32)
    shape = prob.shape[1:]
    if len(survivors) == 0:
        mask, uncertainty = np.zeros(shape, bool), np.zeros(shape, np.float32)
    else:
        mean = survivors.mean(0)
        if scfg.consensus == "medoid":
            mask = survivors[np.abs(survivors - mean).sum(axis=(1, 2)).argmin()] > 0.5
        else:
            mask = mean > 0.5
        uncertainty = survivors.var(0).astype(np.float32)
        if len(prob) == 1:  # a single member (deterministic mode): Bernoulli variance of its soft output
            uncertainty = (prob[0] * (1 - prob[0])).astype(np.float32)
    agreement = (survivors.sum(0) / len(samples)).astype(np.float32) if len(survivors) else uncertainty
    return LayerRecord(mask=mask, uncertainty=uncertainty, agreement=agreement, samples=samples, kept=kept)

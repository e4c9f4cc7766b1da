"""Sample-quality metrics. ``diffvae.metrics.fid``, ``kid`` and ``precision_recall`` are the functions
(they live in :mod:`diffvae.metrics.distances`)."""

from diffvae.metrics.distances import fid, kid, precision_recall

__all__ = ["fid", "kid", "precision_recall"]

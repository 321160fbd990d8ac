"""Analyses built on the kernel: redundancy, relationships, farthest point clustering.

Everything here works on a finished :class:`~lpntk.kernel.Features` store of a scalar kind and
addresses samples by position in it (``X.indices[pos]`` is the original index).
"""

from .clustering import MEASURES, Clusters, farthest_point_clusters
from .redundancy import RULES, Redundancy, drop_redundant, redundant_samples

__all__ = [
    "MEASURES",
    "RULES",
    "Clusters",
    "Redundancy",
    "drop_redundant",
    "farthest_point_clusters",
    "redundant_samples",
]

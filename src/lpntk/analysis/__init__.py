"""Analyses built on the kernel: relationship types, redundancy, farthest point clustering,
label issues.

Everything here works on a finished :class:`~lpntk.kernel.Features` store of a scalar kind and
addresses samples by position in it (``X.indices[pos]`` is the original index).
"""

from .clustering import (
    MEASURES,
    Clusters,
    class_cluster_stats,
    class_heads,
    cluster_stats,
    farthest_point_clusters,
    plot_cluster_sizes,
)
from .label_issues import DESIGNS, LabelIssues, label_issues
from .redundancy import RULES, Redundancy, Witnesses, drop_redundant, redundant_samples
from .relationships import TYPES, Relationships, relationships

__all__ = [
    "DESIGNS",
    "LabelIssues",
    "label_issues",
    "MEASURES",
    "RULES",
    "TYPES",
    "Clusters",
    "Redundancy",
    "Relationships",
    "Witnesses",
    "class_cluster_stats",
    "class_heads",
    "cluster_stats",
    "drop_redundant",
    "farthest_point_clusters",
    "plot_cluster_sizes",
    "redundant_samples",
    "relationships",
]

"""Patch selection strategies (layer 4: imports only the core and torch): which k of an image's m patches the
student sees. One file per strategy, each registered in ``STRATEGIES`` under the short name configs use:

=================  ========  ==========================================================================
name               needs     keeps
=================  ========  ==========================================================================
``full``           nothing   every patch (``keep = None``)
``random``         nothing   k uniformly random patches (the paper's token-level Random*)
``topk``           scores    the k highest governor scores (the paper's default, Eq. 2)
``stratified``     scores    one patch from each of k equal strata of the score ranking (Tab. 5b)
``mix``            scores    per image, one of topk / stratified / random (Tab. 5b's "mix", our reading)
``topk_context``   scores    top-k with a share of the budget drawn uniformly from the rest (context)
``cluster``        features  evenly across k-means clusters of the governor's patch tokens (Cluster*)
=================  ========  ==========================================================================

A new strategy is one file: subclass ``SelectionStrategy``, set ``needs``, implement ``select``, decorate
with ``@STRATEGIES.register("name")``, and import the module below.
"""

from lightning_juicer.selection.base import (
    NEEDS,
    STRATEGIES,
    SelectionStrategy,
    build_strategy,
    keep_count,
    select_random,
    shape_only,
)
from lightning_juicer.selection.grid import resample_features, resample_scores
from lightning_juicer.selection.kmeans import patch_kmeans
from lightning_juicer.selection.full import Full
from lightning_juicer.selection.random import RandomPatches
from lightning_juicer.selection.topk import TopK, select_topk
from lightning_juicer.selection.stratified import Stratified, select_stratified
from lightning_juicer.selection.cluster import Cluster, select_cluster
from lightning_juicer.selection.mix import Mix
from lightning_juicer.selection.context import TopKContext, select_topk_context

__all__ = [
    "NEEDS", "STRATEGIES", "SelectionStrategy", "build_strategy", "keep_count", "select_random", "shape_only",
    "resample_features", "resample_scores", "patch_kmeans", "Full", "RandomPatches", "TopK", "select_topk",
    "Stratified", "select_stratified", "Cluster", "select_cluster", "Mix", "TopKContext", "select_topk_context",
]

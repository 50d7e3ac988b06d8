"""Evaluation: metrics (volumetric and microscopy), scoring folders, cross-validation decisions
(post-processing, best configuration, ensembles), validation of a fold, overlays, instances.
"""

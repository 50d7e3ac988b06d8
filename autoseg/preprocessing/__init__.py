"""Preprocessing: crop to the nonzero region, resample, normalise, store; source keys of the cache;
the U-Net border weight maps.
"""

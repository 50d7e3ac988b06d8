"""Training one fold: the loop, the step, batches, progress and tracking; augmentation in
``augment/`` and losses in ``losses/``.
"""

"""Data as users have it and as autoseg keeps it: dataset layouts, image I/O (NIfTI, ITK, PNG/TIFF),
geometry, paths and the home, the model folder, checkpoints, plans, splits, labels/regions/ignore.

The lowest stage: it imports only the base modules (errors, serial, memory, ...).
"""

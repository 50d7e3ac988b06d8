"""autoseg: self-configuring medical image segmentation.

The pipeline, one module per stage, in the order data flows:
io -> dataset -> fingerprint -> planners/ -> preprocess -> data -> network -> train
-> predict -> postprocess -> evaluate -> cli.
"""

__version__ = "0.1.0"

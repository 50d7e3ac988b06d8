"""Inference: sliding-window prediction, the predictor, folders of cases, saved probabilities,
post-processing, cascade inputs, shards of a folder, model exchange and ONNX export.
"""

"""autoseg: self-configuring medical image segmentation.

The pipeline, one package per stage, in the order a case travels (docs/architecture.md):
data -> planning (planners) -> preprocessing -> networks -> training -> inference -> evaluation
-> cli.

For Python use: ``autoseg.load_model(model_folder)`` (see :mod:`autoseg.api`, docs/api.md).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Segmenter", "__version__", "load_model"]


def __getattr__(name: str) -> Any:
    """``autoseg.load_model`` and ``autoseg.Segmenter``, imported on first use."""
    if name in ("load_model", "Segmenter"):
        from autoseg import api  # torch is heavy: not imported by a bare `import autoseg`

        return getattr(api, name)
    if name == "predictor":  # the module path docs/api.md showed before the layout move
        import importlib

        return importlib.import_module("autoseg.inference.predictor")
    raise AttributeError(f"module 'autoseg' has no attribute {name!r}")

"""Deprecated: [0, 1] pixels and the processor's map to model input live in :mod:`nullspace_hf.pixels`."""

from .._deprecated import moved_names

__getattr__ = moved_names(__name__, {name: "nullspace_hf.pixels" for name in (
    "PixelSpaceClassifier", "PixelTransform", "check_model_input", "images_to_pixels")})

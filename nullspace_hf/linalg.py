"""Deprecated: the exact patch-embedding nullspace lives in :mod:`nullspace_hf.nullspace`."""

from ._deprecated import moved_names

__getattr__ = moved_names(__name__, {name: "nullspace_hf.nullspace"
                                     for name in ("PatchNullspace", "patch_embedding_nullspace")})

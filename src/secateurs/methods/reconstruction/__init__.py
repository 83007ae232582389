"""Reconstructions registry: importing this package registers every built-in reconstruction.

A new reconstruction is one file here (a `Reconstruction` subclass registered in
`RECONSTRUCTIONS`) and one import below.
"""

from secateurs.methods.reconstruction import obs  # noqa: F401  (registration)
from secateurs.methods.reconstruction.base import (
    RECONSTRUCTIONS,
    Reconstruction,
    build_reconstruction,
    reconstruct,
)
from secateurs.methods.reconstruction.obs import OBS, obs_reconstruct

__all__ = [
    "OBS",
    "RECONSTRUCTIONS",
    "Reconstruction",
    "build_reconstruction",
    "obs_reconstruct",
    "reconstruct",
]

"""Reconstructions registry: importing this package registers every built-in reconstruction.

A new reconstruction is one file here (a `Reconstruction` subclass registered in
`RECONSTRUCTIONS`) and one import below.
"""

from secateurs.methods.reconstruction import obs, ridge  # noqa: F401  (registration)
from secateurs.methods.reconstruction.base import (
    RECONSTRUCTIONS,
    Reconstruction,
    build_reconstruction,
    reconstruct,
)
from secateurs.methods.reconstruction.obs import OBS, obs_reconstruct
from secateurs.methods.reconstruction.ridge import RidgeRefit

__all__ = [
    "OBS",
    "RECONSTRUCTIONS",
    "Reconstruction",
    "RidgeRefit",
    "build_reconstruction",
    "obs_reconstruct",
    "reconstruct",
]

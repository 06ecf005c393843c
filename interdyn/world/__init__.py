"""The built-in world's own small SVD: the stages that train it on CPU (the VAE, then the UNet as an
image-to-video model) and the writer of the SVD img2vid folder they produce.

    interdyn world fit --config configs/world/vae.yaml     # stage 1: the temporal VAE on world frames
    interdyn world fit --config configs/world/base.yaml    # stage 2: the UNet (EDM, SVD's conditioning)

See docs/world.md.
"""

from interdyn.world.base import BaseVideoModule
from interdyn.world.folder import write_svd_folder
from interdyn.world.vae import VAEModule

__all__ = ["BaseVideoModule", "VAEModule", "write_svd_folder"]

"""Cached conditioning: the ``cond.npz`` shard field and the training decoder that reads it.

``python -m data_prep.latents`` (``make latents``) runs the frozen VAE and CLIP once per sample, for one
fixed clip window and crop, and adds ``<key>.cond.npz`` to each sample of the shards:

- ``latent_mean``, ``latent_std``: the VAE posterior of the clip's frames, ``(T, 4, H/8, W/8)``,
  unscaled. The training step draws a fresh posterior sample from them, as it would from the encoder.
- ``image_latent``: the noise-augmented first-frame latent ``(4, H/8, W/8)`` (posterior mode, one fixed
  noise draw per sample, seeded from the sample key).
- ``image_embed``: the CLIP image embedding ``(D,)`` of the first frame.
- ``control``: the clip's driver masks ``(T, H, W)`` after the same window and crop.
- ``indices``: the source frames of the window; ``settings``: what the cache was built with (JSON).

For the Wan2.2 TI2V backbone (a config naming ``InterDynWanModule``; ``settings["backbone"]`` is ``"wan"``)
the field holds instead:

- ``wan_latents``: the normalised latents of the clip ``(C, 1 + (T - 1) / 4, H/16, W/16)``, the posterior's
  mode as the training step encodes it (no noise is drawn from the posterior; the first latent frame is
  the image's), with ``control``, ``indices`` and ``settings`` as above.

:class:`CachedClipDecoder` turns such a sample into a training clip without decoding the video, so
both the encoders and video decoding leave the training loop.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from interdyn.data.clip_spec import GEOMETRY_KEYS, ClipSpec
from interdyn.data.shard_format import SkipSample
from interdyn.errors import ConfigError

FIELD = "cond.npz"
# 2: CLIP embeddings from SVD's own antialiased resize (no clamp), VAE encoding in float32 for a
#    ``force_upcast`` VAE, uniform-stride frame timing. Caches of version 1 hold other embeddings.
FORMAT_VERSION = 2


def _pack(
    tensors: dict[str, torch.Tensor],
    control: torch.Tensor,
    indices: Iterable[int],
    settings: dict[str, Any],
    dtype: str,
) -> bytes:
    """The bytes of a ``cond.npz`` field: ``tensors`` stored in ``dtype``, then the bit-packed masks, the
    source frames and the settings."""
    store = np.float16 if dtype == "float16" else np.float32
    buffer = io.BytesIO()
    np.savez(
        buffer,
        **{name: x.detach().float().cpu().numpy().astype(store) for name, x in tensors.items()},
        control=np.packbits(control.bool().cpu().numpy(), axis=-1),
        control_shape=np.asarray(control.shape, dtype=np.int64),
        indices=np.asarray(list(indices), dtype=np.int64),
        settings=np.asarray(json.dumps(settings, sort_keys=True)),
    )
    return buffer.getvalue()


def pack_cache(
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    image_latent: torch.Tensor,
    image_embed: torch.Tensor,
    control: torch.Tensor,
    indices: Iterable[int],
    settings: dict[str, Any],
    dtype: str = "float16",
) -> bytes:
    """Encode one sample's cached conditioning as the bytes of a ``cond.npz`` field."""
    tensors = {
        "latent_mean": latent_mean,
        "latent_std": latent_std,
        "image_latent": image_latent,
        "image_embed": image_embed.flatten(),
    }
    return _pack(tensors, control, indices, settings, dtype)


def pack_wan_cache(
    latents: torch.Tensor,
    control: torch.Tensor,
    indices: Iterable[int],
    settings: dict[str, Any],
    dtype: str = "float16",
) -> bytes:
    """Encode one sample's Wan latents ``(C, F, h, w)`` and driver masks as the bytes of a ``cond.npz`` field."""
    return _pack({"wan_latents": latents}, control, indices, settings, dtype)


def unpack_cache(data: bytes) -> dict[str, Any]:
    """Decode a ``cond.npz`` field: tensors (``control`` as bool) plus the ``settings`` dict; SVD's fields or
    Wan's ``wan_latents``."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        shape = tuple(int(v) for v in npz["control_shape"])
        control = np.unpackbits(npz["control"], axis=-1, count=shape[-1]).astype(bool).reshape(shape)
        if "wan_latents" in npz.files:
            return {
                "wan_latents": torch.from_numpy(npz["wan_latents"]),
                "control": torch.from_numpy(control),
                "indices": torch.from_numpy(npz["indices"]),
                "settings": json.loads(str(npz["settings"])),
            }
        return {
            "latent_mean": torch.from_numpy(npz["latent_mean"]),
            "latent_std": torch.from_numpy(npz["latent_std"]),
            "image_latent": torch.from_numpy(npz["image_latent"]),
            "image_embed": torch.from_numpy(npz["image_embed"]),
            "control": torch.from_numpy(control),
            "indices": torch.from_numpy(npz["indices"]),
            "settings": json.loads(str(npz["settings"])),
        }


def read_cache_settings(shard: str, max_members: int = 10_000) -> dict[str, Any] | None:
    """Settings of the first cached sample of a local shard (``None`` when it has no ``cond.npz``)."""
    with tarfile.open(shard) as tar:
        for i, member in enumerate(tar):
            if i >= max_members:
                break
            if member.name.endswith("." + FIELD):
                fobj = tar.extractfile(member)
                if fobj is not None:
                    return unpack_cache(fobj.read())["settings"]
    return None


def check_cache_settings(settings: dict[str, Any], clip: ClipSpec, where: str) -> None:
    """Raise ``ConfigError`` for a cache of another format version, or naming every geometry setting
    (:data:`~interdyn.data.clip_spec.GEOMETRY_KEYS`) where the cache and the DataModule's ``clip`` differ."""
    version = settings.get("version")
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"the cached conditioning in {where} has format version {version}, this interdyn reads version "
            f"{FORMAT_VERSION} (its CLIP embeddings and latents are computed differently); rebuild it with "
            "`python -m data_prep.latents ... --overwrite` (make latents LATENTS_ARGS=--overwrite)"
        )
    expected = clip.geometry()
    diffs = [
        f"{k}: cache {settings.get(k)!r} vs data {expected[k]!r}"
        for k in GEOMETRY_KEYS
        if settings.get(k) != expected[k]
    ]
    if diffs:
        raise ConfigError(
            f"the cached conditioning in {where} was built for other clips ({'; '.join(diffs)}); rebuild it with "
            "`make latents` for these settings or change the data settings"
        )


class CachedClipDecoder:
    """Turns a shard sample with a ``cond.npz`` field into a training clip:
    ``{control (T,H,W) bool, latent_mean, latent_std (T,4,h,w), image_latents (4,h,w), image_embeds (1,D),
    key, fps, start_frame, cache_noise_aug}``, or for a Wan cache ``{control, wan_latents (C,F,h,w), key, fps,
    start_frame}``. The video is not decoded.

    Args:
        clip: the DataModule's clip; a sample cached for other frames or another size (see ``GEOMETRY_KEYS``)
            raises ``ConfigError`` (mixed caches are a setup error, not a bad sample).
    """

    def __init__(self, clip: ClipSpec) -> None:
        self.clip = clip

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        key = sample.get("__key__", "?")
        if FIELD not in sample:
            raise SkipSample(
                "not_cached", "no cond.npz (skipped by `make latents`, or the shard was not cached)"
            )
        try:
            cache = unpack_cache(sample[FIELD])
        except Exception as err:  # noqa: BLE001 - any parse failure means a bad sample
            raise SkipSample("bad_cache", str(err)) from None
        settings = cache["settings"]
        check_cache_settings(settings, self.clip, f"sample {key!r}")
        fps = settings.get("effective_fps", settings.get("fps"))
        if "wan_latents" in cache:
            return {
                "control": cache["control"],
                "wan_latents": cache["wan_latents"],
                "key": key,
                "fps": float(fps) if fps is not None else 0.0,
                "start_frame": int(cache["indices"][0]),
            }
        return {
            "control": cache["control"],
            "latent_mean": cache["latent_mean"],
            "latent_std": cache["latent_std"],
            "image_latents": cache["image_latent"],
            "image_embeds": cache["image_embed"].unsqueeze(0),
            "key": key,
            "fps": float(fps) if fps is not None else 0.0,
            "start_frame": int(cache["indices"][0]),
            "cache_noise_aug": float(settings["noise_aug_strength"]),
        }

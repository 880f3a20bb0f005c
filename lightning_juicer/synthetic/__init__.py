"""The seeded synthetic image-caption dataset that stands in for noisy web data (CC3M-like).

Scenes are 1-3 saturated shapes on cluttered, muted backgrounds (``shapes``: geometry, ``scenes``:
rendering, ``captions``: clean and web-noisy captions, ``build``: the splits on disk). Training and
validation data are webdataset shards in img2dataset layout with noisy web-style captions; the
evaluation sets are a zero-shot ImageFolder (one object per image) and a Karpathy-style retrieval
split with five clean captions per image. ``prepare_synthetic(SyntheticConfig(root=...))`` writes it
once; ``synthetic_paths(root)`` finds the parts of a generated one.

Layer: a dataset generator (imports ``lightning_juicer.errors`` and ``lightning_juicer.io`` only).
"""

from lightning_juicer.io.writers import decode_mask, encode_mask
from lightning_juicer.synthetic.build import (
    MARKER,
    SyntheticConfig,
    SyntheticPaths,
    is_generated,
    make_web_sample,
    prepare_synthetic,
    synthetic_paths,
)
from lightning_juicer.synthetic.captions import BACKGROUND_WORDS, NOISE_TYPES, add_caption_noise, clean_caption
from lightning_juicer.synthetic.scenes import BACKGROUND_KINDS, COLORS, object_fraction, render_scene
from lightning_juicer.synthetic.shapes import SHAPE_CLASSES

__all__ = ["BACKGROUND_KINDS", "BACKGROUND_WORDS", "COLORS", "MARKER", "NOISE_TYPES", "SHAPE_CLASSES",
           "SyntheticConfig", "SyntheticPaths", "add_caption_noise", "clean_caption", "decode_mask", "encode_mask",
           "is_generated", "make_web_sample", "object_fraction", "prepare_synthetic", "render_scene",
           "synthetic_paths"]

"""A benchmark made only of real images: photographs bundled with scikit-image behind Fashion-MNIST items.

``build_real_photos(RealPhotoConfig(root=...))`` (or ``python preprocess/make_real_photos.py``) writes
training shards in img2dataset layout with web-style noisy captions and ground-truth object masks, a
zero-shot set of unmodified Fashion-MNIST test items, a Karpathy-style retrieval set and an ImageFolder
for fitting an evidence head; ``real_photo_paths(root)`` finds the parts of a built one. Seeded and
byte-deterministic. See ``build.py`` for the layout and docs/real_parts_benchmark.md for the design.
"""

from lightning_juicer.realphoto.build import (
    RealPhotoConfig,
    RealPhotoPaths,
    build_real_photos,
    is_built,
    real_photo_paths,
)
from lightning_juicer.realphoto.captions import NoiseRates, named_classes
from lightning_juicer.realphoto.sources import FASHION_CLASSES, PHOTOS

__all__ = ["FASHION_CLASSES", "PHOTOS", "NoiseRates", "RealPhotoConfig", "RealPhotoPaths", "build_real_photos",
           "is_built", "named_classes", "real_photo_paths"]

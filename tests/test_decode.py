"""The one image decoder: reduced-size JPEG decoding (PIL draft) within a stated tolerance, used everywhere."""

from __future__ import annotations

import io

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from lightning_juicer.io import decode
from lightning_juicer.io.decode import DraftedDecoder, draft_size, gpu_decode, is_jpeg, load_rgb
from lightning_juicer.errors import ConfigError
from lightning_juicer.passes.reader import crop_transform

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (the 'real' extra) is not installed")

# Real photographs bundled with scikit-image (RGB or grayscale uint8).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "hubble_deep_field", "immunohistochemistry",
          "retina", "moon", "cell", "clock")


def web_jpeg(name: str, longest: int) -> bytes:
    """A photograph resized to a web size (longest side) and saved as a quality-90 JPEG."""
    image = Image.fromarray(getattr(skimage_data, name)()).convert("RGB")
    scale = longest / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def test_reduced_decoding_matches_a_full_decode_after_resize_and_crop_within_tolerance():
    # open_clip's eval transform at 224 px (the training loader's and the eval readers'), in 0..255 units.
    transform = open_clip.image_transform(224, is_train=False, mean=(0, 0, 0), std=(1 / 255,) * 3)
    assert draft_size(transform) == (224, 224)
    diffs, psnrs, reduced = [], [], 0
    for name in PHOTOS:
        for longest in (480, 1000):
            data = web_jpeg(name, longest)
            full, drafted = load_rgb(data), load_rgb(data, draft_size(transform))
            reduced += drafted.size[0] < full.size[0]
            a, b = transform(full).numpy(), transform(drafted).numpy()
            assert a.shape == b.shape == (3, 224, 224)
            diffs.append(np.abs(a - b).mean())
            psnrs.append(10 * np.log10(255**2 / max(((a - b) ** 2).mean(), 1e-12)))
    # The draft really reduced the decode for the large images (>= 448 px short side) ...
    assert reduced >= len(PHOTOS)
    # ... and the pixels stay within the documented tolerance: mean |diff| <= 1.5 grey levels over the
    # set, <= 5 on every image, PSNR >= 27 dB on every image (measured: 0.9, 4.2, 28.5).
    assert np.mean(diffs) <= 1.5, np.mean(diffs)
    assert max(diffs) <= 5.0, max(diffs)
    assert min(psnrs) >= 27.0, min(psnrs)


def test_small_images_and_other_formats_decode_exactly_as_before():
    transform = open_clip.image_transform(224, is_train=False)
    small = web_jpeg("astronaut", 400)  # 400 px: 400 // 224 = 1, nothing to reduce
    assert np.array_equal(np.asarray(load_rgb(small)), np.asarray(load_rgb(small, draft_size(transform))))
    png = io.BytesIO()
    Image.fromarray(skimage_data.coffee()).resize((900, 600)).save(png, "PNG")
    full, drafted = load_rgb(png.getvalue()), load_rgb(png.getvalue(), (224, 224))
    assert full.size == drafted.size == (900, 600) and np.array_equal(np.asarray(full), np.asarray(drafted))


def test_draft_size_follows_the_resize_step_of_each_transform():
    assert draft_size(open_clip.image_transform(224, is_train=False)) == (224, 224)
    assert draft_size(open_clip.image_transform(224, is_train=False, resize_mode="squash")) == (224, 224)
    assert draft_size(open_clip.image_transform((192, 256), is_train=False, resize_mode="squash")) == (256, 192)
    # longest-side resizing and training crops have no safe lower bound: full decode
    assert draft_size(open_clip.image_transform(224, is_train=False, resize_mode="longest")) is None
    assert draft_size(open_clip.image_transform(224, is_train=True)) is None
    assert draft_size(crop_transform((224, 224), "bicubic")) == (224, 224)  # the vision pass's (torchvision v2)
    assert draft_size(crop_transform((224, 224), "bicubic"), margin=1.5) == (336, 336)


def test_training_loader_vision_pass_and_eval_reader_all_decode_through_the_drafted_decoder(monkeypatch):
    from lightning_juicer.data.drops import DropCounter
    from lightning_juicer.data.samples import SampleDecoder
    from lightning_juicer.evaluation.datasets import load_image

    calls = []
    real = decode.load_rgb
    monkeypatch.setattr(decode, "load_rgb", lambda source, draft=None: calls.append(draft) or real(source, draft))
    data = web_jpeg("chelsea", 1000)
    transform = open_clip.image_transform(224, is_train=False)
    sample = SampleDecoder(transform, DropCounter())({"__key__": "k", "jpg": data, "txt": b"a cat"})
    assert sample["image"].shape == (3, 224, 224)
    assert load_image(data, transform, "k").shape == (3, 224, 224)
    vision = crop_transform((224, 224), "bicubic")
    assert DraftedDecoder(vision)(data).size == (500, 333)  # 1000 x 666 decoded at 1/2
    assert calls == [(224, 224)] * 3


def test_gpu_decode_selection_falls_back_to_the_cpu():
    assert gpu_decode("cpu", "cuda") is False
    assert gpu_decode("auto", "cpu") is False
    assert gpu_decode("auto", "cuda") is torch.cuda.is_available()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="decode: gpu needs a CUDA device"):
            gpu_decode("gpu", "cuda")
    with pytest.raises(ConfigError, match="decode: 'nvjpeg' is not one of"):
        gpu_decode("nvjpeg", "cpu")
    assert is_jpeg(web_jpeg("camera", 400)) and not is_jpeg(b"\x89PNG\r\n")

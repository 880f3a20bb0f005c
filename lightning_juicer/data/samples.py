"""Per-sample decoding and batch collation for the training stream (runs inside DataLoader workers)."""

from __future__ import annotations

import random
from typing import Callable

import torch
from torch.utils.data import default_collate

from lightning_juicer.io.decode import WIDE_MODES, DraftedDecoder, load_rgb, to_8bit  # noqa: F401 (re-exported)
from lightning_juicer.io.tars import CAPTION_EXTS, IMAGE_EXTS
from lightning_juicer.data.drops import DropCounter
from lightning_juicer.selection import SelectionStrategy, build_strategy, resample_scores, shape_only

CAPTION_SOURCES = ("original", "juiced", "mix")


class SampleDecoder:
    """Raw webdataset sample -> ``{key, image, caption[, scores]}``, or None for a counted drop.

    ``image`` is what ``transform`` makes of the decoded picture: uint8 [3, H, W] in the training stream
    (``DataSpec.pixel_transform``), normalised after the transfer to the device.

    With ``missing_scores`` set, samples carry their sidecar scores; a sample without a sidecar
    entry is dropped (``"skip"``) or kept for random selection (``"random"``), counted either way.
    ``captions`` picks the caption trained on: the shard's ``original``, the text pass's ``juiced``
    one, or the juiced one with probability ``juiced_prob`` (``mix``); a sample without a juiced
    caption uses its original, counted.
    """

    def __init__(
        self,
        transform: Callable,
        drops: DropCounter,
        missing_scores: str | None = None,
        captions: str = "original",
        juiced_prob: float = 1.0,
    ) -> None:
        self.transform = transform
        self.decode = DraftedDecoder(transform)  # JPEGs decoded at the reduced size the resize allows
        self.drops = drops
        self.missing_scores = missing_scores
        self.captions = captions
        self.juiced_prob = juiced_prob if captions == "mix" else 1.0

    def caption(self, original: str, sample: dict) -> str:
        """The caption to train on (DataLoader workers seed ``random`` per worker and epoch)."""
        if self.captions == "original" or (self.juiced_prob < 1.0 and random.random() >= self.juiced_prob):
            return original
        juiced = sample.get("__juiced__")
        if not juiced:
            self.drops.drop("original_for_missing_juiced", sample.get("__key__", "?"))
            return original
        return juiced

    def __call__(self, sample: dict) -> dict | None:
        key = sample.get("__key__", "?")
        image_bytes = next((sample[ext] for ext in IMAGE_EXTS if ext in sample), None)
        if image_bytes is None:
            self.drops.drop("no_image", key)
            return None
        caption_bytes = next((sample[ext] for ext in CAPTION_EXTS if ext in sample), None)
        if caption_bytes is None:
            self.drops.drop("no_caption", key)
            return None
        try:
            caption = caption_bytes.decode("utf-8").strip()
        except UnicodeDecodeError as exn:
            self.drops.drop("bad_caption_encoding", key, str(exn))
            return None
        if not caption:
            self.drops.drop("no_caption", key, "empty caption")
            return None
        try:
            image = self.decode(image_bytes)
        except Exception as exn:  # PIL raises many types for broken files
            self.drops.drop("corrupt_image", key, repr(exn))
            return None
        scores = sample.get("__scores__")
        if self.missing_scores is not None and scores is None:
            if self.missing_scores == "skip":
                self.drops.drop("no_sidecar_entry", key)
                return None
            self.drops.drop("random_for_missing_sidecar", key)
        decoded = {"key": key, "image": self.transform(image), "caption": self.caption(caption, sample)}
        if self.missing_scores is not None:
            decoded["scores"] = scores
        return decoded


class BatchCollator:
    """List of decoded samples -> the batch contract ``{image, keep, text, key}``, ``image`` still uint8.

    The images are stacked by torch's ``default_collate``, which in a DataLoader worker writes the batch
    straight into shared memory (no second copy on its way to the main process); the DataModule
    normalises it after the transfer (``JuicerDataModule.on_after_batch_transfer``).

    A strategy that needs scores (``topk``, ``stratified``, ``mix``, ...) selects from the samples'
    sidecar scores, resampled from the governor's grid onto the student's; samples without scores (or
    with non-finite ones) get random patches, counted. Feature strategies are refused (sidecars do not
    store patch features).
    """

    def __init__(
        self,
        tokenizer: Callable,
        selection: str | SelectionStrategy,
        keep_ratio: float,
        grid: tuple[int, int],
        drops: DropCounter | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.strategy = build_strategy(selection, "data.init_args.selection", ("nothing", "scores"), "sidecars")
        self.keep_ratio = keep_ratio
        self.grid = tuple(grid)
        self.drops = drops

    def select(self, samples: list[dict]) -> torch.Tensor | None:
        """Kept patch indices for the batch (None = all)."""
        num_patches = self.grid[0] * self.grid[1]
        if self.strategy.keeps_all(self.keep_ratio):
            return None
        if self.strategy.needs == "nothing":
            return self.strategy(shape_only(len(samples), num_patches), self.keep_ratio)[0]
        present = [s["scores"] for s in samples if s.get("scores") is not None]
        source_grid = present[0][1] if present else self.grid
        source = torch.full((len(samples), source_grid[0] * source_grid[1]), float("nan"))
        for i, sample in enumerate(samples):
            if sample.get("scores") is not None:
                source[i] = torch.from_numpy(sample["scores"][0].astype("float32"))
        scores = resample_scores(source, source_grid, self.grid)
        keep, fallbacks = self.strategy(scores, self.keep_ratio)
        nonfinite = int(fallbacks) - (len(samples) - len(present))
        if nonfinite and self.drops is not None:
            self.drops.drop("nonfinite_scores", samples[0]["key"], f"{nonfinite} sample(s) in this batch", count=nonfinite)
        return keep

    def __call__(self, samples: list[dict]) -> dict:
        return {
            # PILToTensor's [3, H, W] is a view of PIL's H x W x 3 pixels: stacked as they lie it is a plain copy
            # (a [3, H, W] stack is a strided gather, ~6x slower), and the batch is [B, 3, H, W] in channels_last.
            "image": default_collate([s["image"].permute(1, 2, 0) for s in samples]).permute(0, 3, 1, 2),
            "keep": self.select(samples),
            "text": self.tokenizer([s["caption"] for s in samples]),
            "key": [s["key"] for s in samples],
        }

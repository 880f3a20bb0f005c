"""JuicerDataModule: webdataset shards -> decoded, patch-selected, tokenized batches (DESIGN.md contract)."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from lightning_juicer.data.drops import DropCounter, DropLedger, merge_drops
from lightning_juicer.data.pipeline import SAMPLING_MODES, batches_per_epoch, build_loader
from lightning_juicer.data.samples import CAPTION_SOURCES, BatchCollator, SampleDecoder
from lightning_juicer.data.sidecars import SIDECAR_KEY, SidecarJoin
from lightning_juicer.io.shards import count_samples, expand_shards, shard_sizes
from lightning_juicer.data.spec import DataSpec, DataSpecProvider, OnTheFlySelection
from lightning_juicer.synthetic import SyntheticConfig, prepare_synthetic, synthetic_paths
from lightning_juicer.errors import ConfigError
from lightning_juicer.io.sidecar import check_sidecars, sidecar_path
from lightning_juicer.governor.settings import GovernorConfig
from lightning_juicer.selection import SelectionStrategy, build_strategy
from lightning_juicer.io.keeplist import KeepFilter, check_keep_list, read_keep_list

SCORE_SOURCES = ("on_the_fly", "sidecar")
MISSING_SIDECAR_POLICIES = ("random", "skip")

log = logging.getLogger(__name__)


class JuicerDataModule(L.LightningDataModule):
    """Reads image-text shards (or generates the synthetic set) and yields ``{image, keep, text, key}`` batches.

    Args:
        train_shards: brace patterns / ``a::b`` joined sources / a list of them; None uses the synthetic set.
        train_num_samples: samples per epoch (global); read from ``sizes.json`` / ``*_stats.json`` when None.
        val_shards: shards for the validation loss; None uses the synthetic val split (or no validation
            when training on real shards).
        val_num_samples: like ``train_num_samples`` for ``val_shards``.
        synthetic: settings of the generated dataset used when no shards are given.
        batch_size: per-device batch size; the global batch is batch_size x devices x nodes.
        num_workers: DataLoader workers per rank.
        sampling: ``disjoint`` (each rank/worker reads its own shards, one pass per epoch: every sample exactly
            once when the sizes allow, see ``data/pipeline.py``) or ``resampled`` (shards drawn with
            replacement, as open_clip's ``--dataset-resampled``; no coverage guarantee).
        shuffle_buffer: samples in the in-worker shuffle buffer (0 disables shuffling).
        selection: patch selection strategy for training (``lightning_juicer.selection``): a registered name
            (``topk``, the paper's; ``stratified``, ``mix``, ``topk_context``, ``cluster`` (Cluster*), ``random``
            (Random*), ``full``) or a ``class_path``/``init_args`` instance with its settings.
        keep_ratio: fraction r of patches kept per image, in (0, 1].
        scores: where a strategy that needs scores gets them: ``on_the_fly`` (the frozen governor
            scores each batch on the accelerator, held and run by the LightningModule: see
            ``on_the_fly_selection``) or ``sidecar`` (precomputed; not for strategies that need patch features).
        governor: the frozen governor for on-the-fly scoring (and the one sidecars must come from).
        sidecar_dir: folder of the ``<shard>.juice.parquet`` sidecars (default: next to each shard).
        missing_sidecar: a sample with no sidecar entry gets ``random`` patches or is skipped
            (``skip``); counted either way. (``full`` is impossible: a batch has one k.)
        captions: training captions: ``original`` (the shards'), ``juiced`` (the text pass's, from the
            sidecars) or ``mix`` (juiced with probability ``juiced_prob``); samples without a juiced
            caption use the original, counted as ``original_for_missing_juiced``.
        juiced_prob: probability of the juiced caption per sample and epoch when ``captions: mix``.
        eval_keep_ratio: keep ratio used for validation/test batches (1.0 = full images).
        keep_list: a sieve's keep list (``preprocess/sieve.py``): training samples not on it are skipped and
            counted (``not_in_keep_list``); the epoch is the kept count unless ``train_num_samples`` is set.
            Shards with nothing kept are not read; a list keeping nothing is refused.
        seed: base seed for shard order and shuffling.
    """

    def __init__(
        self,
        train_shards: str | list[str] | None = None,
        train_num_samples: int | None = None,
        val_shards: str | list[str] | None = None,
        val_num_samples: int | None = None,
        synthetic: SyntheticConfig | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        sampling: str = "disjoint",
        shuffle_buffer: int = 1000,
        selection: str | SelectionStrategy = "random",
        keep_ratio: float = 0.5,
        scores: str = "on_the_fly",
        governor: GovernorConfig | None = None,
        sidecar_dir: str | None = None,
        missing_sidecar: str = "random",
        captions: str = "original",
        juiced_prob: float = 0.5,
        eval_keep_ratio: float = 1.0,
        seed: int = 0,
        data_spec: DataSpec | None = None,
        keep_list: str | None = None,
    ) -> None:
        super().__init__()
        for name, ratio in (("keep_ratio", keep_ratio), ("eval_keep_ratio", eval_keep_ratio)):
            if not 0.0 < ratio <= 1.0:
                raise ConfigError(f"data.init_args.{name}: {ratio} is outside (0, 1]")
        self.strategy = build_strategy(selection, "data.init_args.selection")
        if scores not in SCORE_SOURCES:
            raise ConfigError(f"data.init_args.scores: {scores!r} is not one of {SCORE_SOURCES}")
        if self.strategy.needs == "features" and scores == "sidecar":
            raise ConfigError(
                f"data.init_args.scores: selection {self.strategy.name!r} needs the governor's patch features, "
                "which sidecars do not store; set data.init_args.scores on_the_fly"
            )
        if missing_sidecar not in MISSING_SIDECAR_POLICIES:
            raise ConfigError(
                f"data.init_args.missing_sidecar: {missing_sidecar!r} is not one of {MISSING_SIDECAR_POLICIES} "
                "(every sample of a batch keeps the same number of patches, so one sample cannot keep all)"
            )
        if captions not in CAPTION_SOURCES:
            raise ConfigError(f"data.init_args.captions: {captions!r} is not one of {CAPTION_SOURCES}")
        if not 0.0 <= juiced_prob <= 1.0:
            raise ConfigError(f"data.init_args.juiced_prob: {juiced_prob} is outside [0, 1]")
        if sampling not in SAMPLING_MODES:
            raise ConfigError(f"data.init_args.sampling: {sampling!r} is not one of {SAMPLING_MODES}")
        if batch_size < 1:
            raise ConfigError(f"data.init_args.batch_size: {batch_size} must be >= 1")
        self._synthetic_source = train_shards is None
        self.train_urls = None if train_shards is None else expand_shards(train_shards, "data.init_args.train_shards")
        self.val_urls = None if val_shards is None else expand_shards(val_shards, "data.init_args.val_shards")
        self.train_num_samples = train_num_samples
        self.val_num_samples = val_num_samples
        self.synthetic = synthetic or SyntheticConfig()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.sampling = sampling
        self.shuffle_buffer = shuffle_buffer
        self.selection = selection
        self.keep_ratio = keep_ratio
        self.scores = scores
        self.governor = governor or GovernorConfig()
        self.sidecar_dir = sidecar_dir
        self.missing_sidecar = missing_sidecar
        self.captions = captions
        self.juiced_prob = juiced_prob
        self.eval_keep_ratio = eval_keep_ratio
        self.seed = seed
        self.data_spec = data_spec
        self.drops = DropLedger()  # this DataModule's own: the workers' counts, merged after transfer
        self.keep_list = keep_list
        self._keep: KeepFilter | None = None

    @property
    def uses_synthetic(self) -> bool:
        """True when training on the generated synthetic set."""
        return self._synthetic_source

    def prepare_data(self) -> None:
        """Generate the synthetic dataset once, if it is the data source and not on disk yet."""
        if self.uses_synthetic:
            prepare_synthetic(self.synthetic)

    def setup(self, stage: str) -> None:
        """Resolve shard lists and sample counts, and take image size / tokenizer from the model."""
        if self.uses_synthetic and self.train_urls is None:
            paths = synthetic_paths(self.synthetic.root)
            self.train_urls = expand_shards(paths.train_shards, "data.init_args.synthetic.root")
            if self.val_urls is None:
                self.val_urls = expand_shards(paths.val_shards, "data.init_args.synthetic.root")
        if stage in ("validate", "test") and not self.val_urls:
            raise ConfigError(f"data.init_args.val_shards: `{stage}` has no held-out shards to evaluate on; set "
                              "data.init_args.val_shards")
        if self.keep_list and self._keep is None:
            keep = read_keep_list(self.keep_list)
            kept = check_keep_list(keep, self.train_urls)
            # Shards with nothing kept are not read at all (a worker of only such shards could make no batch).
            self.train_urls = [url for url in self.train_urls if kept.get(url)]
            self._keep = KeepFilter(kept)
            log.info("keep list %s (%s): %d training samples kept", self.keep_list, keep.info.get("sieve"), len(self._keep))
            if self.train_num_samples is None:
                self.train_num_samples = len(self._keep)
        if self.train_num_samples is None:
            self.train_num_samples = count_samples(self.train_urls)
            if self.train_num_samples is None:
                raise ConfigError(
                    "data.init_args.train_num_samples: no sizes.json or *_stats.json next to the shards; "
                    "set the number of training samples"
                )
        if self.val_urls is not None and self.val_num_samples is None:
            self.val_num_samples = count_samples(self.val_urls) or 0
        if self.data_spec is None:
            module = self.trainer.lightning_module if self.trainer is not None else None
            if not isinstance(module, DataSpecProvider):
                raise ConfigError("JuicerDataModule needs data_spec= when used without a Juicer LightningModule")
            self.data_spec = module.data_spec()
        if self.selects_from_sidecars or self.captions != "original":
            self._check_sidecars()

    def _check_sidecars(self) -> None:
        """Refuse sidecars of another governor at start-up; report shards that have none."""
        paths = [sidecar_path(url, self.sidecar_dir, key=SIDECAR_KEY) for url in self.train_urls]
        present = [p for p in paths if p.is_file()]
        if not present:
            raise ConfigError(
                f"{SIDECAR_KEY}: no sidecars found (looked for {paths[0]}); run the vision pass "
                "(preprocess/vision_pass.py; and preprocess/text_pass.py for juiced captions) or set "
                "data.init_args.scores on_the_fly and data.init_args.captions original"
            )
        governor = self.governor.name if self.selects_from_sidecars else None
        infos = check_sidecars(present, governor=governor, key="data.init_args.governor.name")
        untexted = [info.path for info in infos if "text" not in info.extra]
        if self.captions != "original" and untexted:
            log.warning("%d of %d sidecars have no juiced captions (run preprocess/text_pass.py), e.g. %s; their "
                        "samples train on their original captions", len(untexted), len(infos), untexted[0])
        if len(present) < len(paths):
            log.warning("%d of %d shards have no sidecar; their samples follow missing_sidecar=%s",
                        len(paths) - len(present), len(paths), self.missing_sidecar)

    @property
    def selects_from_sidecars(self) -> bool:
        """True when training batches select patches from precomputed sidecar scores."""
        return (self.strategy.needs == "scores" and self.scores == "sidecar"
                and not self.strategy.keeps_all(self.keep_ratio))

    @property
    def selects_on_the_fly(self) -> bool:
        """True when the governor scores training batches on the device after transfer."""
        return (self.strategy.needs != "nothing" and self.scores == "on_the_fly"
                and not self.strategy.keeps_all(self.keep_ratio))

    @property
    def on_the_fly_selection(self) -> OnTheFlySelection | None:
        """What the LightningModule must select on the device for training batches (None: the batches are complete).

        Read-only: the model builds and holds the frozen governor from it (``models/governed.py``).
        """
        if not self.selects_on_the_fly:
            return None
        return OnTheFlySelection(self.strategy, self.keep_ratio, self.governor)

    def _loader(self, urls: list[str], num_samples: int, selection: str, keep_ratio: float, key: str, train: bool):
        from_sidecars = train and self.selects_from_sidecars
        juiced = train and self.captions != "original"
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampling, num_workers = self.sampling, self.num_workers
        if not train:
            # Evaluation sets are small: use as many workers as there are shards per rank.
            per_rank = len(urls) // world_size
            sampling = "disjoint" if per_rank >= 1 else "resampled"
            num_workers = min(num_workers, max(per_rank, 1))
        drops = DropCounter()
        spec = self.data_spec
        return build_loader(
            urls,
            decode=SampleDecoder(spec.pixel_transform(), drops, self.missing_sidecar if from_sidecars else None,
                                 self.captions if train else "original", self.juiced_prob),
            collate=BatchCollator(spec.tokenizer, selection, keep_ratio, spec.grid, drops),
            join=SidecarJoin(self.sidecar_dir) if from_sidecars or juiced else None,
            keep=self._keep.counting(drops) if train and self._keep is not None else None,
            sizes=self._shard_sizes(train),
            drops=drops,
            batch_size=self.batch_size,
            num_batches=batches_per_epoch(num_samples, self.batch_size, world_size, num_workers),
            num_workers=num_workers,
            rank=rank,
            world_size=world_size,
            sampling=sampling,
            seed=self.seed,
            shuffle_buffer=self.shuffle_buffer if train else 0,
            key=key,
            pin_memory=bool(self.trainer and self.trainer.strategy.root_device.type == "cuda"),
        )

    def _shard_sizes(self, train: bool):
        """Samples per shard URL for splitting batches over workers: kept counts with a keep list, else sizes.json."""
        if train and self._keep is not None:
            kept = self._keep.kept
            return lambda url: len(kept.get(url, ()))
        return shard_sizes(self.train_urls if train else self.val_urls).get

    def train_dataloader(self):
        """Training stream at the configured selection strategy and keep ratio."""
        selection = "full" if self.selects_on_the_fly else self.strategy  # the keep is filled after transfer
        return self._loader(
            self.train_urls, self.train_num_samples, selection, self.keep_ratio, "data.init_args.train_shards", True
        )

    def val_dataloader(self):
        """Validation stream (contrastive loss on held-out pairs) at ``eval_keep_ratio``."""
        if not self.val_urls:
            return []
        selection = "full" if self.eval_keep_ratio >= 1.0 else "random"
        return self._loader(
            self.val_urls, self.val_num_samples, selection, self.eval_keep_ratio, "data.init_args.val_shards", False
        )

    def test_dataloader(self):
        """Same held-out stream as validation."""
        return self.val_dataloader()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Finish a batch on the device: the workers' drop counts go into this DataModule's ledger, and the
        uint8 images become the contract's normalised floats (``DataSpec.normalize``), in the dtype the
        trainer's precision gives its inputs (``bf16-true`` -> bfloat16; the mixed precisions keep float32).

        Outside a Trainer, call it on each batch of ``train_dataloader()`` / ``val_dataloader()``.
        """
        if isinstance(batch, dict):
            merge_drops(self.drops, batch)
            image = batch.get("image")
            if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
                image = self.data_spec.normalize(image)
                batch["image"] = self.trainer.precision_plugin.convert_input(image) if self.trainer else image
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Drop totals survive checkpoint/resume."""
        return {"drops": dict(self.drops)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore drop totals from a checkpoint (an older one may hold the model's reasons too: the run total stays right)."""
        self.drops = DropLedger(state_dict.get("drops", {}))

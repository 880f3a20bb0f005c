"""Image-text retrieval during fit, at its end, and on validate/test (see ``callbacks/evaluation.py``)."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import Dataset

from lightning_juicer.callbacks.evaluation import EvaluationCallback
from lightning_juicer.errors import ConfigError
from lightning_juicer.evaluation.datasets import KarpathyRetrieval, WebDatasetEval, is_shard_spec
from lightning_juicer.evaluation.retrieval import evaluate_retrieval
from lightning_juicer.evaluation.zeroshot import EvalResult
from lightning_juicer.governor.settings import GovernorConfig
from lightning_juicer.selection import SelectionStrategy


class RetrievalEvaluation(EvaluationCallback):
    """Image->text and text->image recall@1/5/10 and their mean, logged as ``eval/<name>/i2t_r1`` etc.

    Args:
        name: dataset name in metric keys and results.json (``coco``, ``flickr30k``, ``synthetic``).
        root: image folder for ``annotations``, or webdataset shards (image + ``txt``, one caption per
            line or a JSON list); None (with no annotations) = the synthetic retrieval set.
        annotations: Karpathy split JSON (``dataset_coco.json``) or an ALBEF/BLIP ``[{image, caption}]`` list.
        split: Karpathy split to evaluate (``test``: COCO 5k, Flickr30k 1k).
        captions_per_image: captions kept per image (5 in the standard protocol; None = all).
        title: name in the console table (``COCO``); defaults to ``name``.
        every_n_steps, at_fit_end, batch_size, num_workers, keep_ratio, selection, seed, governor: as
            ZeroShotEvaluation.
        chunk_size: image/caption rows per similarity block.
    """

    task = "retrieval"

    def __init__(self, name: str = "retrieval", root: str | None = None, annotations: str | None = None,
                 split: str = "test", captions_per_image: int | None = 5, title: str | None = None,
                 every_n_steps: int = 0, at_fit_end: bool = True, batch_size: int = 64, num_workers: int = 2,
                 keep_ratio: float = 1.0, selection: str | SelectionStrategy = "random", seed: int = 0, chunk_size: int = 1024,
                 governor: GovernorConfig | None = None) -> None:
        super().__init__(name, title, every_n_steps, at_fit_end, batch_size, num_workers, keep_ratio, selection,
                         seed, governor)
        if captions_per_image is not None and captions_per_image < 1:
            raise ConfigError(f"{self._key('captions_per_image')}: {captions_per_image} must be >= 1 (or null)")
        self.root = root
        self.annotations = annotations
        self.split = split
        self.captions_per_image = captions_per_image
        self.chunk_size = chunk_size

    def build_dataset(self, trainer: L.Trainer, transform: Any) -> Dataset:
        """Karpathy JSON + image folder, or webdataset shards."""
        root, annotations = self.root, self.annotations
        if root is None and annotations is None:
            paths = self._synthetic(trainer, "root")
            root, annotations = str(paths.retrieval_json.parent), str(paths.retrieval_json)
        if root is None:
            raise ConfigError(f"{self._key('root')}: required with annotations (the folder holding the images)")
        if annotations is None:
            if not is_shard_spec(root):
                raise ConfigError(f"{self._key('annotations')}: required unless root is webdataset shards "
                                  f"(got the folder or missing path {root})")
            return WebDatasetEval(root, "retrieval", transform, key=self._key("root"),
                                  captions_per_image=self.captions_per_image)
        return KarpathyRetrieval(annotations, root, transform, self.split, self.captions_per_image,
                                 key=self._key("root"), annotations_key=self._key("annotations"))

    def evaluate(self, pl_module, loader, keep, trainer) -> EvalResult:
        """Recall@K both ways on the gathered set."""
        return evaluate_retrieval(
            pl_module, loader, pl_module.device, keep, trainer.global_rank, trainer.world_size,
            trainer.strategy.all_gather, trainer.precision_plugin.forward_context, chunk_size=self.chunk_size,
        )

    def display_names(self) -> dict[str, str]:
        """``i2t_r1`` -> "<title> image->text R@1", ..., ``mean_recall`` -> "<title> mean recall"."""
        names = {f"i2t_r{k}": f"{self.title} image->text R@{k}" for k in (1, 5, 10)}
        names.update({f"t2i_r{k}": f"{self.title} text->image R@{k}" for k in (1, 5, 10)})
        names["mean_recall"] = f"{self.title} mean recall"
        return names

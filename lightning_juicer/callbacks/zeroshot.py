"""Zero-shot classification during fit, at its end, and on validate/test (see ``callbacks/evaluation.py``)."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import Dataset

from lightning_juicer.callbacks.evaluation import EvaluationCallback
from lightning_juicer.errors import ConfigError
from lightning_juicer.evaluation.datasets import (
    IMAGENET_SETS,
    ImageFolderClassification,
    WebDatasetEval,
    imagenet_subset,
    is_shard_spec,
)
from lightning_juicer.evaluation.zeroshot import EvalResult, evaluate_zeroshot, resolve_templates
from lightning_juicer.governor.settings import GovernorConfig
from lightning_juicer.io.classnames import read_classnames
from lightning_juicer.selection import SelectionStrategy


class ZeroShotEvaluation(EvaluationCallback):
    """Zero-shot top-1/top-5 from class names x prompt templates (open_clip's classifier): ``eval/<name>/top1``.

    Args:
        name: dataset name in metric keys and results.json (``imagenet``, ``imagenet-r``, ``synthetic``).
        root: ImageFolder directory (``root/<class>/<image>``) or webdataset shards with ``cls``; None = the
            synthetic zero-shot set of a DataModule that trains on synthetic data.
        classnames: class-names file (one per line, sorted-folder / label order) or ``imagenet`` /
            ``imagenet-r`` / ``imagenet-a`` (wnid folders, or shard labels in that set's order); for a folder,
            None = ``root/classnames.txt``, else wnid folders as ImageNet, else the folder names.
        templates: ``openai`` (80, CLIP's), ``simple`` (open_clip's 7), ``photo`` ("a photo of a {}.") or a list.
        title: name in the console table (``ImageNet-1k``); defaults to ``name``.
        every_n_steps: evaluate every N optimizer steps during fit (0 = only at the end).
        at_fit_end: evaluate the final weights when fit ends.
        batch_size: images per forward on each rank.
        num_workers: DataLoader workers per rank.
        keep_ratio: fraction of patches the image tower sees (1.0 = full images; the paper's Table 4 below).
        selection: patch selection below keep ratio 1 (``lightning_juicer.selection``, a name or a class_path
            instance): ``topk`` / ``stratified`` / ``mix`` / ``topk_context`` / ``cluster`` (the governor's scores or
            patch tokens, on the fly), ``random`` (seeded per image) or ``full``.
        seed: seed of the per-image patch selection (every strategy but topk and full).
        governor: the frozen governor for the strategies that need it; None = the DataModule's
            (sharing its loaded model when it scores on the fly), else ``juicer-synthetic``.
    """

    task = "zeroshot"

    def __init__(self, name: str = "zeroshot", root: str | None = None, classnames: str | None = None,
                 templates: str | list[str] = "openai", title: str | None = None, every_n_steps: int = 0,
                 at_fit_end: bool = True, batch_size: int = 64, num_workers: int = 2, keep_ratio: float = 1.0,
                 selection: str | SelectionStrategy = "random", seed: int = 0, governor: GovernorConfig | None = None) -> None:
        super().__init__(name, title, every_n_steps, at_fit_end, batch_size, num_workers, keep_ratio, selection,
                         seed, governor)
        self.root = root
        self.classnames = classnames
        self.templates = resolve_templates(templates, self._key("templates"))
        self.template_set = templates if isinstance(templates, str) else "custom"

    def build_dataset(self, trainer: L.Trainer, transform: Any) -> Dataset:
        """ImageFolder or webdataset classification set; fixes ``self.classnames_list``."""
        root, classnames = self.root, self.classnames
        if root is None:
            paths = self._synthetic(trainer, "root")
            root, classnames = str(paths.zeroshot_dir), classnames or str(paths.classnames_file)
        if is_shard_spec(root):
            if classnames is None:
                raise ConfigError(f"{self._key('classnames')}: required for webdataset shards (a file or one of "
                                  f"{IMAGENET_SETS})")
            self.classnames_list = (imagenet_subset(classnames)[1] if classnames in IMAGENET_SETS
                                    else read_classnames(classnames, self._key("classnames")))
            return WebDatasetEval(root, "classification", transform, key=self._key("root"))
        dataset = ImageFolderClassification(root, classnames, transform, key=self._key("root"),
                                            classnames_key=self._key("classnames"))
        self.classnames_list = dataset.classnames
        return dataset

    def evaluate(self, pl_module, loader, keep, trainer) -> EvalResult:
        """Zero-shot top-1/top-5 of the model on the gathered set."""
        result = evaluate_zeroshot(
            pl_module, loader, self.classnames_list, self.templates, pl_module.device, keep,
            trainer.global_rank, trainer.world_size, trainer.strategy.all_gather,
            trainer.precision_plugin.forward_context, classnames_key=self._key("classnames"),
        )
        result.extra["templates"] = self.template_set
        return result

    def display_names(self) -> dict[str, str]:
        """``top1`` -> "<title> zero-shot top-1"."""
        return {"top1": f"{self.title} zero-shot top-1", "top5": f"{self.title} zero-shot top-5"}

"""Lightning callbacks: zero-shot and retrieval evaluation, throughput, kept-patch pictures, run summary and manifest
(``FullPatchPhase`` only refuses an old config in one line: the phase is the model's, ``models/phase.py``)."""

from lightning_juicer.callbacks.evaluation import EvaluationCallback
from lightning_juicer.callbacks.full_patch_phase import FullPatchPhase
from lightning_juicer.callbacks.pictures import KeptPatchPictures
from lightning_juicer.callbacks.retrieval import RetrievalEvaluation
from lightning_juicer.callbacks.run_summary import RunSummary
from lightning_juicer.callbacks.throughput import ImageThroughput
from lightning_juicer.callbacks.zeroshot import ZeroShotEvaluation

__all__ = ["EvaluationCallback", "FullPatchPhase", "ImageThroughput", "KeptPatchPictures", "RetrievalEvaluation",
           "RunSummary", "ZeroShotEvaluation"]

"""Lightning callbacks: evaluation, throughput, kept-patch pictures, run summary and manifest."""

from lightning_juicer.callbacks.evaluation import RetrievalEvaluation, ZeroShotEvaluation
from lightning_juicer.callbacks.pictures import KeptPatchPictures
from lightning_juicer.callbacks.run_summary import RunSummary
from lightning_juicer.callbacks.throughput import ImageThroughput

__all__ = ["ImageThroughput", "KeptPatchPictures", "RetrievalEvaluation", "RunSummary", "ZeroShotEvaluation"]

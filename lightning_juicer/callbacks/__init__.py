"""Lightning callbacks: throughput, run summary and manifest."""

from lightning_juicer.callbacks.pictures import KeptPatchPictures
from lightning_juicer.callbacks.run_summary import RunSummary
from lightning_juicer.callbacks.throughput import ImageThroughput

__all__ = ["ImageThroughput", "KeptPatchPictures", "RunSummary"]

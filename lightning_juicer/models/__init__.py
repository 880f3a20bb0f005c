"""Models: open_clip construction, the variable-token image tower and the LightningModules."""

from lightning_juicer.models.module import JuicerCLIP

__all__ = ["JuicerCLIP"]

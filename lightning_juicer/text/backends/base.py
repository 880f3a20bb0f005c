"""The text-backend interface: a caption engine's typed settings, its run-time setup, and ``rewrite``.

A backend's **settings** are its constructor arguments (typed, so that jsonargparse configures
``backend: {class_path: ..., init_args: {...}}``; a registered short name such as ``backend: rules``
builds it with its defaults). What it needs at run time that is not a setting (the prompts, the
corpus its vocabulary is counted on, a folder for derived files) comes through :meth:`TextBackend.setup`
as a :class:`BackendContext`, once, before the first ``rewrite``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lightning_juicer.registry import Registry
from lightning_juicer.text.prompts import PromptConfig, Request

KEY = "backend.init_args"  # where a backend's settings are in the text pass config (error messages)


@dataclass(frozen=True)
class BackendContext:
    """What the text pass gives a backend at run time: the prompts, the job's shards (its caption corpus) and
    the folder the pass writes into (for derived files such as a counted vocabulary)."""

    prompts: PromptConfig = field(default_factory=PromptConfig)
    shards: Sequence[str] = ()
    work_dir: Path | None = None


class TextBackend:
    """A caption engine: ``rewrite(requests) -> outputs``, one raw output per request (validated by the pass).

    Subclasses take their settings as typed constructor arguments and keep each under the attribute of
    the same name (the default :attr:`settings`); ``module`` is an ``nn.Module`` Lightning moves to the
    device (a model), or None.
    """

    registered_name: str = ""  # set by ``BACKENDS.register``
    module: nn.Module | None = None

    @property
    def name(self) -> str:
        """The backend's name in the manifest and the sidecars: its registered name, else its class name."""
        return self.registered_name or type(self).__name__

    @property
    def settings(self) -> dict[str, Any]:
        """What changes the outputs, stored in the sidecars (a rerun with other settings is refused or redone).

        Default: the constructor's arguments, read from the attributes of the same name. Override it when
        a setting resolves to something else (a model folder to its path, a word list to its digest).
        """
        skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        parameters = inspect.signature(type(self).__init__).parameters.values()
        return {p.name: getattr(self, p.name) for p in parameters if p.name != "self" and p.kind not in skip}

    def setup(self, context: BackendContext) -> TextBackend:
        """Take what the backend needs at run time (load a model, count a vocabulary); returns the backend."""
        return self

    def rewrite(self, requests: Sequence[Request]) -> list[str]:
        """One raw output per request."""
        raise NotImplementedError(f"{type(self).__name__}.rewrite")


BACKENDS: Registry[TextBackend] = Registry("text backend", "backend")

"""Text backends (the text governor's caption engines), one file each, registered in ``BACKENDS``:

* ``transformers`` (``transformers.py``): any causal LM with a chat template (local folder or a name in the
  local Hugging Face cache; never downloaded), batched with left padding, greedy;
* ``rules`` (``rules.py``): deterministic repair without a model, the offline default and a baseline;
* ``concat`` (``concat.py``): the paper's concat ablation, the evidence class names appended.

A new engine (vLLM, an HTTP server, ...) is one file: a :class:`TextBackend` subclass whose constructor
arguments are its typed settings, ``setup`` for what it needs at run time, ``rewrite``, and
``@BACKENDS.register("<name>")``; import it here (or name it by ``class_path`` in the config).
"""

from lightning_juicer.text.backends.base import BACKENDS, KEY, BackendContext, TextBackend
from lightning_juicer.text.backends.concat import ConcatBackend
from lightning_juicer.text.backends.rules import RulesBackend
from lightning_juicer.text.backends.transformers import TransformersBackend

__all__ = ["BACKENDS", "KEY", "BackendContext", "TextBackend", "ConcatBackend", "RulesBackend",
           "TransformersBackend"]

"""One registry type for the extension points (selection strategies, sieves, text backends, model
families; passes are the ``cli.COMMANDS`` table), in timm's style: a class registers itself under a short name with a decorator, and a
config may name it by that short name or give it as a jsonargparse ``class_path`` / ``init_args``.

    STRATEGIES = Registry("selection strategy", "data.init_args.selection")

    @STRATEGIES.register("topk")
    class TopK(SelectionStrategy): ...

    STRATEGIES.build("topk")          # -> TopK()
    STRATEGIES.build(TopK(...))       # an instance (jsonargparse class_path) passes through
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from lightning_juicer.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Short name -> class for one kind of extension; ``what`` and ``key`` make the error messages."""

    def __init__(self, what: str, key: str) -> None:
        self.what = what
        self.key = key
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: register ``cls`` under ``name`` (and record the name on the class)."""

        def add(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.what} {name!r} is registered twice ({self._classes[name]} and {cls})")
            self._classes[name] = cls
            cls.registered_name = name  # type: ignore[attr-defined]
            return cls

        return add

    def names(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def get(self, name: str, key: str | None = None) -> type[T]:
        """The class registered as ``name``, or a one-line ConfigError naming the config key and the choices."""
        try:
            return self._classes[name]
        except KeyError:
            raise ConfigError(f"{key or self.key}: {name!r} is not a {self.what}; choose from "
                              f"{', '.join(self._classes)}") from None

    def build(self, spec: str | T, key: str | None = None, **kwargs: Any) -> T:
        """An instance from a registered name (default settings, or ``kwargs``) or an instance as it is."""
        if isinstance(spec, str):
            return self.get(spec, key)(**kwargs)
        return spec

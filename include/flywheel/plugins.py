"""Extension points: each maps a config ``type`` to its implementation, in one place.

Every kind of thing a user adds (a metric, a log source, a compute backend, a deploy hook, an alert
channel) has one :class:`Registry`. A built-in is named by its short ``type`` (``elasticsearch``,
``vllm``, ...); a user's own is named by its dotted path, ``package.module:Name`` (or
``package.module.Name``), and can live in the user's own package. Built-ins are registered as import
paths and imported on first use, so reading the config (which DAG files do) stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from flywheel.errors import ConfigError

T = TypeVar("T")


class PluginNotFoundError(ConfigError):
    """A ``type`` that is neither a built-in nor an importable dotted path (a configuration error)."""


def import_object(path: str) -> Any:
    """The object at ``package.module:Name`` or ``package.module.Name``."""
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise PluginNotFoundError(f"{path!r} is not a dotted path of the form 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginNotFoundError(f"cannot import module {module_name!r} of {path!r}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise PluginNotFoundError(f"module {module_name!r} has no {attribute!r}") from None


def is_dotted_path(name: str) -> bool:
    """Whether ``name`` names a user's own implementation rather than a built-in ``type``."""
    return "." in name or ":" in name


class Registry(Generic[T]):
    """The implementations of one extension point, built-in by name and the user's own by dotted path."""

    def __init__(self, kind: str, builtins: Mapping[str, str], *, base: type | None = None) -> None:
        """``kind`` names the extension point in errors; ``builtins`` maps each ``type`` to an import path;
        ``base``, when given, is the class every implementation must subclass."""
        self.kind = kind
        self.base = base
        self._builtins = dict(builtins)

    @property
    def builtin_names(self) -> list[str]:
        return list(self._builtins)

    def check(self, name: str) -> str:
        """``name`` if it is a built-in or a dotted path (for config validation, without importing it)."""
        if name in self._builtins or is_dotted_path(name):
            return name
        known = ", ".join(repr(n) for n in self._builtins)
        raise PluginNotFoundError(
            f"unknown {self.kind} {name!r}: use one of {known} or the dotted path of your own "
            "('package.module:Name')"
        )

    def resolve(self, name: str) -> T:
        """The implementation named ``name``, imported now (checked to subclass ``base`` when one is set)."""
        implementation = import_object(self._builtins.get(self.check(name), name))
        if self.base is not None and not (
            isinstance(implementation, type) and issubclass(implementation, self.base)
        ):
            base = f"{self.base.__module__}.{self.base.__qualname__}"
            raise PluginNotFoundError(f"{self.kind} {name!r} is not a subclass of {base}")
        return implementation

"""Optional dependencies, imported on first use with an error that names the extra.

``pip install innkt-analytics`` brings the SDK's required dependencies only;
zstd compression and AES-256-GCM encryption at rest need the ``zstd`` and
``encryption`` extras. A module that uses one binds an ``OptionalModule`` at
import time (type checkers see the real module through ``TYPE_CHECKING``), so
nothing is imported until a feature that needs it is used, and using it
without the extra raises ``ConfigError`` saying what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from innkt_analytics.shared._exceptions import ConfigError

__all__ = ["OptionalModule"]


class OptionalModule:
    """A stand-in for module ``name``: attribute access imports it.

    Raises ``ConfigError(field, …)`` naming ``pip install 'innkt-analytics[extra]'``
    when the module is not installed.
    """

    def __init__(self, name: str, *, extra: str, feature: str, field: str) -> None:
        self._name = name
        self._extra = extra
        self._feature = feature
        self._field = field
        self._module: ModuleType | None = None

    def load(self) -> ModuleType:
        """The real module. Raises ``ConfigError`` when it is not installed."""
        if self._module is None:
            try:
                self._module = importlib.import_module(self._name)
            except ImportError as exc:
                raise ConfigError(
                    self._field,
                    f"{self._feature} needs the {self._name.split('.')[0]} package: "
                    f"pip install 'innkt-analytics[{self._extra}]' ({exc})",
                ) from None
        return self._module

    def __getattr__(self, attr: str) -> Any:
        # Only called for names the instance does not have: the module's attributes.
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.load(), attr)

"""String-keyed registries with "did you mean" errors.

Every pluggable piece (loss fn, layer map, projection, task family, metric, teacher strategy, model
source, backend) is one entry in a registry, so adding one never grows an if-chain, and a typo in a
config name fails the same way everywhere, before any model loads.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar, overload

T = TypeVar("T")


def unknown_choice_message(kind: str, name: object, choices: Iterable[str], context: str = "") -> str:
    """``unknown <kind> 'x'[ for <context>]; valid: a, b, c[; did you mean 'y'?]``."""
    choices = sorted(choices)
    where = f" for {context}" if context else ""
    msg = f"unknown {kind} {name!r}{where}; valid: {', '.join(choices)}"
    close = difflib.get_close_matches(str(name), choices, n=1)
    if close:
        msg += f"; did you mean {close[0]!r}?"
    return msg


class Registry(Generic[T]):
    """A named mapping from config names to entries."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T) -> T: ...

    def register(self, name: str, entry: object = None) -> object:
        """``REG.register("x", obj)`` adds ``obj``; ``@REG.register("x")`` decorates a definition."""
        if entry is not None:
            self.add(name, entry)  # type: ignore[arg-type]
            return entry

        def decorator(item: T) -> T:
            self.add(name, item)
            return item

        return decorator

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise KeyError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def remove(self, name: str) -> T:
        """Drop an entry (tests that register a toy one clean up with this)."""
        return self._entries.pop(name)

    def get(self, name: str, context: str = "") -> T:
        if name not in self._entries:
            raise ValueError(unknown_choice_message(self.kind, name, self._entries, context))
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

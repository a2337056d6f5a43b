"""String-keyed registries with "did you mean" errors.

Every pluggable piece (task handler, metric, teacher strategy, model source) is one entry in a
registry, so adding one never grows an if-chain in the training path.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def unknown_choice_message(kind: str, name: object, choices: list[str]) -> str:
    """The one wording for every "unknown name" error: the bad value, the valid ones, a suggestion."""
    msg = f"unknown {kind} {name!r}; valid choices: {', '.join(sorted(choices))}"
    close = difflib.get_close_matches(str(name), choices, n=1)
    if close:
        msg += f". Did you mean {close[0]!r}?"
    return msg


class Registry(Generic[T]):
    """A named mapping from string keys to entries."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(entry: T) -> T:
            self.add(name, entry)
            return entry

        return decorator

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise KeyError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(unknown_choice_message(self.kind, name, list(self._entries)))
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

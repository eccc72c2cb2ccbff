"""One registry pattern for everything a user picks by name (methods, ops, presets, backbones, data
sources, evaluators, schedules, commands), and one key checker with "did you mean".

>>> METHODS = Registry("method")
>>> @METHODS.register("simclr")
... class SimCLR: ...
>>> METHODS.get("simclr") is SimCLR, METHODS.names()
(True, ['simclr'])
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable, Iterator

from ssl_aug.errors import SslAugError

__all__ = ["Registry", "did_you_mean", "check_keys"]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' did you mean 'x'?' for the closest choice (difflib ratio >= 0.6), else ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" did you mean {close[0]!r}?" if close else ""


def check_keys(given: Iterable[str], allowed: Iterable[str], where: str) -> None:
    """Refuse the first key of `given` that is not in `allowed`, in one line naming the closest key and
    the allowed ones. `where` names the place, e.g. "recipe key 'augment." (the key is appended)."""
    allowed = list(allowed)
    for key in given:
        if key not in allowed:
            raise SslAugError(f"{where}{key}': unknown key;{did_you_mean(key, allowed)} allowed: "
                              f"{', '.join(allowed) or 'none'}")


class Registry:
    """Name -> object, in registration order. `register` (decorator or direct), `get` (one-line error with
    the closest name and the choices), `names`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None, *, replace: bool = False) -> Callable | Any:
        """`@REG.register("name")` on a class or function, or `REG.register("name", obj)`.
        A name registered twice is refused unless replace=True."""
        if not isinstance(name, str) or not name:
            raise SslAugError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def add(item):
            if name in self._items and not replace and self._items[name] is not item:
                raise SslAugError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> Any:
        """Remove `name` and return what it held (tests that register a toy entry clean up with this)."""
        return self._items.pop(name, None)

    pop = unregister

    def get(self, name: str) -> Any:
        if name not in self._items:
            raise SslAugError(f"unknown {self.kind} {name!r};{did_you_mean(name, self._items)} choose one of: "
                              f"{', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def items(self):
        return self._items.items()

    def values(self):
        return self._items.values()

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, name: str) -> Any:  # dict-style access keeps older call sites working
        return self.get(name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

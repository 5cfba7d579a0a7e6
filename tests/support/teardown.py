"""The shape of most client fixtures here: a factory whose products are closed at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar


class Closable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=Closable)


def closed_at_teardown(make: Callable[..., T], *bound: Any) -> Iterator[Callable[..., T]]:
    """For a fixture to `yield from`: yields `factory(*args, **kwargs)`, which returns
    `make(*bound, *args, **kwargs)`; everything it made is closed after the test,
    in the order they were made."""
    made: list[T] = []

    def factory(*args: Any, **kwargs: Any) -> T:
        thing = make(*bound, *args, **kwargs)
        made.append(thing)
        return thing

    yield factory
    for thing in made:
        thing.close()

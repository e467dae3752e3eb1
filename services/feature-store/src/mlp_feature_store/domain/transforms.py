"""On-demand transformations: Python functions registered by name in code, run at read time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlp_core.errors import InvalidArgument

#: Column-wise: input feature ref → values; returns output feature name → values (same length).
TransformFn = Callable[[dict[str, list[Any]]], dict[str, list[Any]]]


class TransformRegistry:
    """Functions that on-demand transformation definitions may name."""

    def __init__(self) -> None:
        self._fns: dict[str, TransformFn] = {}

    def register(self, name: str, fn: TransformFn) -> None:
        """Make ``fn`` available as ``name``."""
        self._fns[name] = fn

    def __contains__(self, name: object) -> bool:
        return name in self._fns

    def run(self, name: str, inputs: dict[str, list[Any]], outputs: list[str], n: int) -> dict[str, list[Any]]:
        """Run ``name`` and check that it returned every output with ``n`` values."""
        fn = self._fns.get(name)
        if fn is None:
            raise InvalidArgument(f"transformation function '{name}' is not registered in this service")
        result = fn(inputs)
        for out in outputs:
            if out not in result or len(result[out]) != n:
                raise InvalidArgument(f"transformation '{name}' did not return {n} values for '{out}'")
        return {o: list(result[o]) for o in outputs}

"""Small pure helpers shared by the layout converters: unwrap, strip prefixes, drop heads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from zoo.errors import ZooError

StateDict = dict[str, Tensor]


class CheckpointLayoutError(ZooError, ValueError):
    """A checkpoint is not in the layout its converter reads."""


def unwrap(ckpt: Any, wrappers: Iterable[str]) -> Mapping[str, Any]:
    """The state dict inside a training checkpoint: the first of `wrappers` present, else `ckpt` itself."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointLayoutError(f"expected a dict of tensors, got {type(ckpt).__name__}")
    for key in wrappers:
        if isinstance(ckpt.get(key), Mapping):
            return ckpt[key]
    return ckpt


def tensors_only(state: Mapping[str, Any], layout: str) -> StateDict:
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointLayoutError(
            f"not a {layout} checkpoint: entries {', '.join(map(repr, bad[:5]))} are not tensors "
            f"(is this a training checkpoint in another layout? try another --from)")
    return dict(state)


def strip_prefix(state: StateDict, prefix: str) -> StateDict:
    """Remove `prefix` from every key that has it; keys without it are kept as they are."""
    return {k.removeprefix(prefix): v for k, v in state.items()}


def select_prefix(state: StateDict, prefixes: str | tuple[str, ...], layout: str) -> StateDict:
    """Keep only the keys under the first of `prefixes` that has any (without it); none: wrong layout."""
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    for prefix in prefixes:
        out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if out:
            return out
    raise CheckpointLayoutError(f"not a {layout} checkpoint: no key starts with "
                                f"{' or '.join(map(repr, prefixes))} (keys look like {_sample(state)})")


def drop_prefixes(state: StateDict, prefixes: Iterable[str]) -> StateDict:
    prefixes = tuple(prefixes)
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def _sample(state: Mapping[str, Any], n: int = 3) -> str:
    keys = list(state)[:n]
    return ", ".join(map(repr, keys)) + (" ..." if len(state) > n else "") if keys else "nothing (empty)"

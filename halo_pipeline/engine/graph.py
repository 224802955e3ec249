"""The DAG of a recipe: edges from input references and `needs`, order, cycles, and partial runs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Ref:
    """`<step_id>.<output>`: the output of another step."""

    step: str
    output: str

    def __str__(self) -> str:
        return f"{self.step}.{self.output}"


class CycleError(ValueError):
    def __init__(self, cycle: list[str]):
        self.cycle = cycle
        super().__init__("cycle: " + " -> ".join(cycle))


def topo_order(deps: Mapping[str, Iterable[str]]) -> list[str]:
    """Steps in an order where each comes after its dependencies; ties keep the recipe's order."""
    deps = {k: [d for d in v if d in deps] for k, v in deps.items()}
    order: list[str] = []
    done: set[str] = set()
    pending = list(deps)
    while pending:
        ready = [s for s in pending if all(d in done for d in deps[s])]
        if not ready:
            raise CycleError(find_cycle(deps, pending))
        for s in ready:
            order.append(s)
            done.add(s)
        pending = [s for s in pending if s not in done]
    return order


def find_cycle(deps: Mapping[str, Iterable[str]], among: Iterable[str]) -> list[str]:
    among = list(among)
    for start in among:
        path, seen = [start], {start}
        node = start
        while True:
            nxt = next((d for d in deps[node] if d in among), None)
            if nxt is None:
                break
            if nxt in seen:
                return path[path.index(nxt) :] + [nxt]
            path.append(nxt)
            seen.add(nxt)
            node = nxt
    return among


def ancestors(deps: Mapping[str, Iterable[str]], step: str) -> set[str]:
    out: set[str] = set()
    stack = list(deps[step])
    while stack:
        s = stack.pop()
        if s not in out:
            out.add(s)
            stack.extend(deps[s])
    return out


def descendants(deps: Mapping[str, Iterable[str]], step: str) -> set[str]:
    children: dict[str, set[str]] = {k: set() for k in deps}
    for k, ds in deps.items():
        for d in ds:
            children[d].add(k)
    return ancestors(children, step)


def select(
    deps: Mapping[str, Iterable[str]],
    only: Iterable[str] = (),
    from_: str | None = None,
    until: str | None = None,
) -> set[str]:
    """The steps to run for `--only a,b`, `--from x` (x and what follows) and `--until y` (y and what it needs)."""
    chosen = set(deps)
    only = list(only)
    if only:
        chosen &= set(only)
    if from_:
        chosen &= {from_} | descendants(deps, from_)
    if until:
        chosen &= {until} | ancestors(deps, until)
    return chosen

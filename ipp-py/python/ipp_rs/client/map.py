"""Partitioning of sequences for scatter, gather and DirectView map (as ipyparallel's
``ipyparallel.client.map``): ``'b'`` = contiguous blocks, ``'r'`` = round-robin striping."""

from __future__ import annotations

import sys
from itertools import chain, islice
from typing import Any, Sequence


def is_array(obj: Any) -> bool:
    """Whether `obj` is a numpy array (without importing numpy if nobody has)."""
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(obj, numpy.ndarray)


class Map:
    """Partitions a sequence into `q` contiguous blocks whose sizes differ by at most one."""

    def getPartition(self, seq: Sequence, p: int, q: int, n: int | None = None) -> Any:
        """The `p`-th of `q` partitions of `seq` (of length `n`, default ``len(seq)``)."""
        n = len(seq) if n is None else n
        if p < 0 or p >= q:
            raise ValueError(f"must have 0 <= p <= q, but have p={p},q={q}")
        remainder = n % q
        basesize = n // q
        if p < remainder:
            low = p * (basesize + 1)
            high = low + basesize + 1
        else:
            low = p * basesize + remainder
            high = low + basesize
        try:
            return seq[low:high]
        except TypeError:
            # objects that cannot be sliced (iterators)
            return list(islice(seq, low, high))

    def joinPartitions(self, listOfPartitions: list) -> Any:
        """Reassembles the partitions into one sequence."""
        return self.concatenate(listOfPartitions)

    def concatenate(self, listOfPartitions: list) -> Any:
        """numpy arrays are concatenated, lists and tuples chained into one list; anything
        else is returned as the list of partitions."""
        first = listOfPartitions[0]
        if is_array(first):
            import numpy

            return numpy.concatenate(listOfPartitions)
        if isinstance(first, (list, tuple)):
            return list(chain.from_iterable(listOfPartitions))
        return listOfPartitions


class RoundRobinMap(Map):
    """Partitions a sequence round-robin: partition `p` holds items p, p+q, p+2q, ..."""

    def getPartition(self, seq: Sequence, p: int, q: int, n: int | None = None) -> Any:
        n = len(seq) if n is None else n
        return seq[p:n:q]

    def joinPartitions(self, listOfPartitions: list) -> Any:
        first = listOfPartitions[0]
        if is_array(first):
            return self.flatten_array(listOfPartitions)
        if isinstance(first, (list, tuple)):
            return self.flatten_list(listOfPartitions)
        return listOfPartitions

    def flatten_array(self, listOfPartitions: list) -> Any:
        """Interleaves array partitions back into one array."""
        import numpy

        first = listOfPartitions[0]
        shape = list(first.shape)
        shape[0] = sum(part.shape[0] for part in listOfPartitions)
        out = numpy.empty(shape, dtype=first.dtype)
        q = len(listOfPartitions)
        for p, part in enumerate(listOfPartitions):
            out[p : shape[0] : q] = part
        return out

    def flatten_list(self, listOfPartitions: list) -> list:
        """Interleaves list partitions back into one list."""
        flat = []
        for i in range(len(listOfPartitions[0])):
            flat.extend(part[i] for part in listOfPartitions if len(part) > i)
        return flat


def mappable(obj: Any) -> bool:
    """Whether `obj` can be partitioned (a list, tuple or numpy array)."""
    return isinstance(obj, (tuple, list)) or is_array(obj)


dists = {"b": Map, "r": RoundRobinMap}

__all__ = ["Map", "RoundRobinMap", "dists", "mappable", "is_array"]

"""A record reader that survives header keys that are not UTF-8.

Kafka's protocol says a header key is a UTF-8 string, but the broker does not check it: any
producer writing raw bytes can store one that is not. aiokafka 0.14 decodes header keys strictly
while it unpacks a fetched batch, so such a record raises from ``getmany`` on every poll and its
partition never moves again. ``install()`` swaps the fetcher's record reader for one that reads
batches with aiokafka's fast reader as before and, only when a batch fails that way, reads it again
with aiokafka's own pure-Python reader decoding keys with U+FFFD for the bad bytes. The record then
reaches the pipeline, which dead-letters or handles it like any other.

This reaches into aiokafka internals (``consumer.fetcher.MemoryRecords`` and the pure-Python
record classes); pyproject pins aiokafka below 0.15 and a test fails if the hook stops working.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, SupportsIndex

from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchPy
from aiokafka.record.memory_records import _MemoryRecordsPy


class _LenientBytes(bytearray):
    """Bytes whose slices decode with replacement: what the pure-Python reader decodes keys from."""

    def __getitem__(self, index: SupportsIndex | slice) -> Any:
        item = super().__getitem__(index)
        return _LenientBytes(item) if isinstance(index, slice) else item

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytearray.decode(self, encoding, "replace")


class _LenientBatchPy(_DefaultRecordBatchPy):  # type: ignore[misc]  # aiokafka is untyped here
    def __iter__(self) -> _LenientBatchPy:
        super().__iter__()  # decompresses into self._buffer
        self._buffer: bytearray = _LenientBytes(self._buffer)
        return self


class _Batch:
    """aiokafka's batch, read again leniently if a header key is not UTF-8."""

    def __init__(self, raw: memoryview) -> None:
        self._raw = raw
        self._batch = DefaultRecordBatch(raw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __next__(self) -> Any:  # control batches are read with next()
        return next(self._batch)

    def __iter__(self) -> Iterator[Any]:
        handed_out = -1
        try:
            for record in self._batch:
                handed_out = record.offset
                yield record
        except UnicodeDecodeError:
            for record in _LenientBatchPy(self._raw):
                if record.offset > handed_out:
                    yield record


class LenientMemoryRecords(_MemoryRecordsPy):  # type: ignore[misc]
    def next_batch(self, *args: Any) -> Any:
        raw = self._next_slice
        if raw is None or len(raw) < self.MIN_SLICE or raw[self.MAGIC_OFFSET] < 2:
            return super().next_batch(*args)
        self._cache_next()
        return _Batch(raw)


def install() -> None:
    """Make every consumer in this process read batches leniently (idempotent)."""
    fetcher.MemoryRecords = LenientMemoryRecords

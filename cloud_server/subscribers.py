"""Live fan-out of detection results to ``Detections.Subscribe`` streams."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, replace

from .results import FrameResult


@dataclass(frozen=True)
class ResultFilter:
    camera_ids: frozenset[str] = frozenset()  # empty: all cameras
    class_names: frozenset[str] = frozenset()  # empty: every result, even with no detection
    min_confidence: float = 0.0

    def apply(self, result: FrameResult) -> FrameResult | None:
        """The result as this subscriber sees it, or None when it is filtered out."""
        if self.camera_ids and result.camera_id not in self.camera_ids:
            return None
        kept = tuple(d for d in result.detections if d.confidence >= self.min_confidence
                     and (not self.class_names or d.class_name in self.class_names))
        if self.class_names and not kept:
            return None
        return result if kept == result.detections else replace(result, detections=kept)


class Subscription:
    """A subscriber's queue; ``None`` marks its end (server shutdown or too slow)."""

    def __init__(self, result_filter: ResultFilter, capacity: int) -> None:
        self.filter = result_filter
        self.queue: queue.Queue[FrameResult | None] = queue.Queue(capacity + 1)
        self.overflowed = False

    def offer(self, result: FrameResult) -> bool:
        """Queue a result; False when the subscriber fell ``capacity`` results behind (then it is ended)."""
        seen = self.filter.apply(result)
        if seen is None:
            return True
        if self.queue.qsize() >= self.queue.maxsize - 1:
            self.overflowed = True
            self.end()
            return False
        self.queue.put_nowait(seen)
        return True

    def end(self) -> None:
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass


class SubscriberHub:
    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self._subscriptions: set[Subscription] = set()
        self._lock = threading.Lock()
        self._closed = False

    def subscribe(self, result_filter: ResultFilter) -> Subscription:
        subscription = Subscription(result_filter, self.capacity)
        with self._lock:
            if self._closed:
                subscription.end()
            else:
                self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)

    def publish(self, results: list[FrameResult]) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            for result in results:
                if not subscription.offer(result):
                    self.unsubscribe(subscription)
                    break

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._subscriptions)

    def close(self) -> None:
        """End every subscription (server shutdown)."""
        with self._lock:
            self._closed = True
            subscriptions, self._subscriptions = self._subscriptions, set()
        for subscription in subscriptions:
            subscription.end()

"""Every camera's live results on every replica's ``Detections.Subscribe`` stream.

A replica detects only the cameras it holds. :class:`FleetHub` is the hub its operators subscribe to: the results
its detector stores (also offered to the other replicas through ``ReplicaLink.Relay``, :attr:`FleetHub.own`)
and those relayed from its peers. :class:`PeerFeeds` keeps one ``Relay`` stream open to every other live replica
while this replica has at least one subscriber (none otherwise: the relay costs nothing unless someone watches).
Each result is stored by one replica, so it reaches a subscriber once; results detected while a peer's stream is
being reopened are not replayed (live feed, as without replicas).
"""

from __future__ import annotations

import logging
import threading

import grpc

from .leases import CameraLeases
from .replica_routing import ReplicaRouter
from .results import FrameResult
from .subscribers import SubscriberHub

log = logging.getLogger("icmh.cloud.feed")


class FleetHub(SubscriberHub):
    """Operators' subscriptions: this replica's results (:meth:`publish`) and its peers' (:meth:`relay`)."""

    def __init__(self, capacity: int = 1000) -> None:
        super().__init__(capacity)
        self.own = SubscriberHub(capacity)  # this replica's results only: what its peers relay

    def publish(self, results: list[FrameResult]) -> None:
        super().publish(results)
        self.own.publish(results)

    def relay(self, results: list[FrameResult]) -> None:
        super().publish(results)

    def close(self) -> None:
        super().close()
        self.own.close()


class PeerFeeds:
    """The ``Relay`` streams from the other live replicas into :class:`FleetHub`, while anyone subscribes."""

    def __init__(self, hub: FleetHub, leases: CameraLeases, router: ReplicaRouter, interval_s: float) -> None:
        self.hub, self.leases, self.router, self.interval_s = hub, leases, router, interval_s
        self._calls: dict[str, tuple[str, grpc.Future]] = {}  # replica id -> (address, call)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="peer-feeds", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.refresh()
            except Exception as exc:  # the index is away: try again next round
                log.warning("cannot refresh the peers' result feeds: %s", exc)

    def refresh(self) -> None:
        """Open the streams of live peers (when someone subscribes here), close the others."""
        me = self.leases.identity.replica_id
        wanted = ({rid: address for rid, (address, _) in self.leases.live_replicas().items() if rid != me}
                  if self.hub.count else {})
        with self._lock:
            for rid, (address, call) in list(self._calls.items()):
                if wanted.get(rid) != address or call.done():
                    call.cancel()
                    del self._calls[rid]
            for rid, address in wanted.items():
                if rid not in self._calls and not self._stop.is_set():
                    call = self.router.relay(address)
                    self._calls[rid] = (address, call)
                    threading.Thread(target=self._read, args=(rid, call), name=f"feed-{rid}", daemon=True).start()

    def _read(self, replica_id: str, call: grpc.Future) -> None:
        try:
            for message in call:
                self.hub.relay([FrameResult.from_proto(message)])
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                log.info("results of replica %s: stream ended (%s: %s); reopened next round", replica_id,
                         exc.code().name, exc.details())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            calls, self._calls = list(self._calls.values()), {}
        for _, call in calls:
            call.cancel()

"""Camera ownership of one cloud-server replica among several on a shared PostgreSQL index.

:class:`ReplicaCoordinator` decides which edge streams this replica takes (:meth:`claim`: the camera's lease is
free, its own or expired) and keeps its leases alive: a heartbeat thread renews them every third of the lease,
ends the streams of cameras whose lease it lost (their edges are redirected to the new holder), releases the
leases of cameras whose edge stayed away for a whole lease with nothing left to detect or publish (so that the
edge may come back through any replica), and adopts cameras left with frames or results due and no live lease
(a replica died or stopped), at most its fair share per round. A heartbeat that cannot reach the index for a
whole lease counts every lease as lost (the others take them over).

Rebalancing: when this replica has held at least two cameras more than the least loaded live replica for
``rebalance_s`` (a replica joined, e.g. scaled out by an autoscaler), it hands the surplus leases over to the
least loaded ones and ends those streams with a redirect; the receiving replica's heartbeat picks the leases up
and resumes their work. The index's frame states keep every frame detected and published once across a move.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable

from .edge_sessions import EdgeSessions
from .leases import Holder, ReplicaIdentity
from .metrics import CloudMetrics
from .replica_index import ReplicaFrameIndex

log = logging.getLogger("icmh.cloud.replicas")
NOBODY = Holder("", "", 0.0)  # a lease lost without a known new holder


class ReplicaCoordinator:
    def __init__(self, index: ReplicaFrameIndex, sessions: EdgeSessions, metrics: CloudMetrics,
                 on_takeover: Callable[[set[str]], None] = lambda cameras: None, rebalance_s: float = 0.0) -> None:
        self.index, self.leases, self.sessions, self.metrics = index, index.leases, sessions, metrics
        self.on_takeover = on_takeover  # cameras acquired from another holder: their work resumes here
        self.rebalance_s = rebalance_s  # how long an imbalance lasts before cameras move (0: never)
        self._unbalanced_since: float | None = None
        self._held: set[str] = set()
        self._lost: set[str] = set()  # cameras whose stream was ended because their lease moved
        self._idle_since: dict[str, float] = {}
        self._fenced = False
        self._last_renewal = time.monotonic()
        self._lock = threading.Lock()  # claims and heartbeats see one set of held cameras
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def identity(self) -> ReplicaIdentity:
        return self.leases.identity

    def held(self) -> set[str]:
        with self._lock:
            return set(self._held)

    # -- edges -------------------------------------------------------------------------------------------------
    def claim(self, camera_id: str) -> Holder | None:
        """Before an edge's stream is accepted: None when this replica holds the camera's lease now, else the
        replica the edge must go to (:data:`NOBODY` when this process no longer owns its replica id)."""
        with self._lock:
            if self._fenced:
                return NOBODY
            claim = self.leases.acquire(camera_id)
            if claim.acquired:
                self._held.add(camera_id)
                self._idle_since.pop(camera_id, None)
                self._lost.discard(camera_id)
                self.metrics.owned_cameras.set(len(self._held))
        if claim.holder is not None:
            self.metrics.edge_redirects.inc()
            return claim.holder
        if claim.takeover:
            self._resumed({camera_id}, {camera_id}, "its edge connected here")
        return None

    def lost(self, camera_id: str) -> Holder | None:
        """After a camera's stream ended: the replica now holding it when the stream was ended because this one
        lost the lease (None otherwise)."""
        with self._lock:
            if camera_id not in self._lost:
                return None
            self._lost.discard(camera_id)
        return self.leases.holder(camera_id) or NOBODY

    def holder(self, camera_id: str) -> Holder | None:
        """The other replica holding the camera's live lease (None: free, expired or this one)."""
        return self.leases.holder(camera_id)

    def holders(self) -> dict[str, Holder]:
        return self.leases.holders()

    # -- heartbeat ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="replica-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = self.identity.lease_s / 3
        while not self._stop.wait(interval):
            try:
                self.beat()
            except Exception as exc:
                self.metrics.errors.labels("lease").inc()
                log.warning("lease heartbeat failed: %s", exc)
                if time.monotonic() - self._last_renewal > self.identity.lease_s:
                    self._drop_all("the index was unreachable for a whole lease")

    def beat(self) -> None:
        """One heartbeat (see the module docstring)."""
        with self._lock:
            status = {}
            for camera in self._held:
                session = self.sessions.get(camera)
                status[camera] = (session is not None, session.fps.rate() if session else 0.0)
            held = self.leases.renew(status)
            if held is None:
                self._fenced = True
                log.error("another cloud-server process took over replica id %r: this one gives up its cameras",
                          self.identity.replica_id)
                held = set()
            self._last_renewal = time.monotonic()
            self._end_streams(self._held - held)
            handed = held - self._held  # leases another replica handed over to this one (rebalancing)
            self._held = held
        if handed:
            self._resumed(handed, set(), "handed over for balance")
        self._release_idle(held)
        live = self.leases.live_replicas()
        if not self._fenced:
            self._adopt()
            self._rebalance(list(live))
        self.metrics.live_replicas.set(len(live))
        self.metrics.owned_cameras.set(len(self.held()))

    def _rebalance(self, live: list[str]) -> None:
        """Hand surplus leases to the least loaded live replicas once an imbalance has lasted ``rebalance_s``."""
        me = self.identity.replica_id
        if not self.rebalance_s or len(live) < 2 or me not in live:
            self._unbalanced_since = None
            return
        load = Counter({replica: 0 for replica in live})
        load.update(h.replica_id for h in self.leases.holders().values() if h.replica_id in load)
        if load[me] - min(load.values()) < 2:
            self._unbalanced_since = None
            return
        now = time.monotonic()
        if self._unbalanced_since is None:
            self._unbalanced_since = now
        if now - self._unbalanced_since < self.rebalance_s:
            return
        self._unbalanced_since = None
        plan: dict[str, list[str]] = {}
        movable = sorted(self.held(), reverse=True)
        while movable:
            target = min(live, key=lambda replica: (load[replica], replica))
            if load[me] - load[target] < 2:
                break
            plan.setdefault(target, []).append(movable.pop())
            load[me] -= 1
            load[target] += 1
        for target, cameras in plan.items():
            with self._lock:
                moved = self.leases.hand_over(cameras, target)
                self._end_streams(moved)
                self._held -= moved
            if moved:
                self.metrics.lease_handovers.inc(len(moved))
                log.info("handed camera%s %s over to replica %s (balance)", "s" if len(moved) > 1 else "",
                         ", ".join(sorted(moved)), target)

    def _end_streams(self, cameras: set[str]) -> None:
        """Cameras whose lease this replica lost (caller holds the lock): end their edges' streams."""
        for camera in sorted(cameras):
            log.warning("camera %s: lease moved to another replica", camera)
            session = self.sessions.get(camera)
            if session is not None:
                self._lost.add(camera)
                self.sessions.close(session)
            self._idle_since.pop(camera, None)

    def _drop_all(self, reason: str) -> None:
        with self._lock:
            if self._held:
                log.error("giving up the streams of %d cameras: %s", len(self._held), reason)
            self._end_streams(self._held)
            self._held = set()
            self.metrics.owned_cameras.set(0)

    def _release_idle(self, held: set[str]) -> None:
        now, lease_s = time.monotonic(), self.identity.lease_s
        idle = []
        with self._lock:
            for camera in held:
                if self.sessions.get(camera) is not None:
                    self._idle_since.pop(camera, None)
                elif now - self._idle_since.setdefault(camera, now) > lease_s:
                    idle.append(camera)
        if not idle:
            return
        free = set(idle) - self.leases.with_work(idle)
        if not free:
            return
        with self._lock:  # an edge may have come back meanwhile
            free = {c for c in free if self.sessions.get(c) is None and c in self._held}
            self.leases.release(free)
            self._held -= free
            for camera in free:
                self._idle_since.pop(camera, None)
        log.info("released the leases of idle cameras %s (no edge for %.0f s, nothing due)",
                 ", ".join(sorted(free)), lease_s)

    def _adopt(self) -> None:
        """Take on a fair share of the cameras with work due and no live lease."""
        orphans = sorted(self.leases.with_work(unleased=True))
        if not orphans:
            return
        share = math.ceil(len(orphans) / max(1, len(self.leases.live_replicas())))
        adopted, expired = set(), set()
        for camera in orphans[:share]:
            with self._lock:
                if self._fenced:
                    break
                claim = self.leases.acquire(camera)
                if claim.acquired:
                    self._held.add(camera)
                    adopted.add(camera)
                    if claim.takeover:
                        expired.add(camera)
        if adopted:
            self._resumed(adopted, expired, "frames or results were due")

    def _resumed(self, cameras: set[str], expired: set[str], why: str) -> None:
        """This replica took on ``cameras`` from another process (``expired``: whose lease it let expire)."""
        self.metrics.lease_takeovers.inc(len(expired))
        log.info("took over camera%s %s (%s)", "s" if len(cameras) > 1 else "", ", ".join(sorted(cameras)), why)
        self.on_takeover(cameras)

    def stop(self) -> None:
        """Stop the heartbeat; release every lease and the replica row (clean shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            self.leases.unregister()
        except Exception as exc:  # the leases then expire by themselves
            log.warning("could not release the camera leases: %s", exc)

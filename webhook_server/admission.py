"""What the receiver spends on requests it has not verified yet, and who may spend it.

Verifying a signature is cheap; what an unauthenticated client can make expensive is memory
(a request head or a body that arrives slowly is held until it is complete) and time (a slot held
by a body that never finishes). These pieces bound both, process-wide:

* :class:`ByteBudget` — bytes held at once by heads (``server.headBudgetBytes``) or by bodies
  being read before verification (``server.bodyBudgetBytes``). When it is spent, the holders that
  have held bytes the longest (and longer than a grace period) are evicted to make room: a
  provider's request arrives within a round trip or two, a slow one is what an attacker sends.
* :class:`VerificationLane` — where a request goes when its source's unverified-request budget is
  empty: a small body is still read and verified, within a few concurrent slots, at most a couple
  per client address, so an unsigned flood cannot starve signed deliveries.
* :class:`ClientAddresses` — the address a request came from: the TCP peer, or, only when the
  peer is a configured trusted proxy, the last untrusted address of ``X-Forwarded-For``.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from webhook_server.config import ServerConfig

# A holder of a byte budget that has held bytes for less than this is never evicted: time for a
# provider's head or body, which arrives within a round trip or two, to finish.
BUDGET_GRACE_SECONDS = 1.0


class Holder(Protocol):
    """Something holding bytes of a budget; ``evict`` gives them up (it closes the request)."""

    def evict(self) -> None: ...


class ByteBudget:
    """Bytes held at once by requests in progress, and by whom, in the order they began holding.

    ``take`` never fails while there is room. When there is none, holders past the grace period
    are evicted oldest first until there is, which costs O(1) per eviction; when the oldest is
    still within its grace period, ``take`` fails and the caller refuses its request.
    """

    def __init__(
        self,
        limit: int,
        *,
        grace_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[], None] = lambda: None,
    ) -> None:
        self.limit = limit
        self.used = 0
        self.grace_seconds = BUDGET_GRACE_SECONDS if grace_seconds is None else grace_seconds
        self._clock = clock
        self._on_evict = on_evict
        # Insertion-ordered: the first key began holding first.
        self._since: dict[Holder, float] = {}
        self._held: dict[Holder, int] = {}

    def take(self, holder: Holder, size: int) -> bool:
        if self.used + size > self.limit and not self._make_room(holder, size):
            return False
        held = self._held.get(holder)
        if held is None:
            self._since[holder] = self._clock()
            self._held[holder] = size
        else:
            self._held[holder] = held + size
        self.used += size
        return True

    def release(self, holder: Holder) -> None:
        held = self._held.pop(holder, None)
        if held is not None:
            del self._since[holder]
            self.used -= held

    def held_by(self, holder: Holder) -> int:
        return self._held.get(holder, 0)

    def __len__(self) -> int:
        return len(self._held)

    def _make_room(self, taker: Holder, size: int) -> bool:
        if self.held_by(taker) + size > self.limit:
            return False  # no eviction could make room
        young = self._clock() - self.grace_seconds
        while self.used + size > self.limit:
            victim = None
            for candidate, since in self._since.items():
                if since > young:
                    return False  # the rest began holding later still
                if candidate is not taker:
                    victim = candidate
                    break
            if victim is None:
                return False
            self._on_evict()
            self.release(victim)
            victim.evict()
        return True


class VerificationLane:
    """Slots for reading a small body when the source's unverified budget is empty.

    A request whose body has already arrived needs no slot (it is verified at once: that costs
    less than keeping it apart). One whose body is still coming holds a slot until it has arrived,
    at most ``per_client`` of them per client address, so that one client sending slow bodies
    cannot hold them all.
    """

    def __init__(self, slots: int, per_client: int) -> None:
        self.slots = slots
        self.per_client = per_client
        self.busy = 0
        self._by_client: dict[str, int] = {}

    def enter(self, client: str) -> bool:
        held = self._by_client.get(client, 0)
        if self.busy >= self.slots or held >= self.per_client:
            return False
        self._by_client[client] = held + 1
        self.busy += 1
        return True

    def leave(self, client: str) -> None:
        held = self._by_client.get(client, 0)
        if held <= 0:
            return
        if held == 1:
            del self._by_client[client]
        else:
            self._by_client[client] = held - 1
        self.busy -= 1


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ClientAddresses:
    """The client address of a request, for the lane's per-client fairness (nothing else).

    Behind a load balancer or an ingress every request comes from the proxy's address; only when
    that address is in ``trusted`` (``server.trustedProxies``) is ``X-Forwarded-For`` read, from
    the right, skipping trusted addresses: the first other one is the address the proxy saw. A
    header a client wrote itself sits further left and is never reached.
    """

    def __init__(self, trusted: Sequence[str]) -> None:
        self._trusted: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in trusted
        )

    def of(self, peer: str | None, headers: Mapping[str, str]) -> str:
        peer = peer or ""
        if not self._trusted or not self._is_trusted(peer):
            return peer
        getall = getattr(headers, "getall", None)
        lines = getall("X-Forwarded-For", ()) if getall else [headers.get("X-Forwarded-For", "")]
        forwarded = ",".join(lines)
        if not forwarded:
            return peer
        for hop in reversed(forwarded.split(",")):
            address = _address(hop.strip())
            if address is None:
                return peer  # not an address: the proxy did not write it
            if not any(address in network for network in self._trusted):
                return str(address)
        return peer

    def _is_trusted(self, peer: str) -> bool:
        address = _address(peer)
        return address is not None and any(address in network for network in self._trusted)


def _address(text: str) -> _Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class BodyBudgetSpent(Exception):
    """No room in the body budget for this request's body (or it was evicted to make room)."""


class BodyReader:
    """A body being read before verification, as a holder of the body budget: evicting it ends
    its read with :class:`BodyBudgetSpent`."""

    __slots__ = ("_budget", "_stream")

    def __init__(self, budget: ByteBudget, stream: StreamLike) -> None:
        self._budget = budget
        self._stream = stream

    def take(self, size: int) -> None:
        if not self._budget.take(self, size):
            raise BodyBudgetSpent

    def release(self) -> None:
        self._budget.release(self)

    def evict(self) -> None:
        self._stream.set_exception(BodyBudgetSpent())


class StreamLike(Protocol):
    def set_exception(self, exc: BaseException) -> None: ...


@dataclass(frozen=True)
class Admission:
    """The process-wide admission state of one application (see the module's docstring)."""

    bodies: ByteBudget
    lane: VerificationLane
    lane_max_body_bytes: int
    clients: ClientAddresses

    @classmethod
    def build(cls, server: ServerConfig, largest_body: int) -> Admission:
        """``largest_body``: the largest ``limits.maxBodyBytes`` of the sources served. The body
        budget holds at least one such body, or a large body arriving slowly could never be read.
        """
        lane = server.verification_lane
        return cls(
            bodies=ByteBudget(max(server.body_budget_bytes, largest_body)),
            lane=VerificationLane(lane.slots, lane.slots_per_client),
            lane_max_body_bytes=lane.max_body_bytes,
            clients=ClientAddresses(server.trusted_proxies),
        )

"""What the batchers know about requests that are on their way (batcher.py uses it to decide
whether a request runs at once or waits for company).

- HTTP: aiohttp reads a request head in one turn of the event loop and runs its handler in a
  later one. ``http_pending`` counts the heads read whose handler has not begun: while it is
  above 0, other requests will reach the batcher within this turn and the next.
- gRPC: grpc.aio hands calls to the event loop one at a time, each after a round trip through
  its completion queue, so concurrent calls never reach the batcher in the same turn.
  ``ConcurrencyForecast`` counts the calls inside the server and remembers the most that were
  inside at once lately (``peak``, over the last one to two ``WINDOW_S``). Clients that work
  in a loop (one call at a time per thread, the next right after the answer: synchronous
  clients, perf_analyzer at a concurrency) keep about ``peak`` calls going; while fewer are
  inside, the others are expected soon, and a batch waits for them, until as many as the peak
  are inside or ``HOLD_S`` after its oldest request, whichever comes first. A call that runs at
  once never lets another one in (it does not wait for anything), so a peak of 1 says nothing
  about the clients: at most every ``PROBE_S`` such a call waits ``HOLD_S`` (a probe), and a
  call that arrives meanwhile raises the peak. A lone client never waits but for the probes
  (one request in a hundred or more: under 1 % of its throughput); the peak of a load that
  stopped is forgotten after at most two windows.
"""

from __future__ import annotations

HOLD_S = 0.001  # the longest a batch waits for calls expected soon
WINDOW_S = 0.5  # the peak is the most calls inside at once over the last 1-2 windows
PROBE_S = 0.1  # with a peak of 1, a call waits HOLD_S for company at most this often


class ConcurrencyForecast:
    """Calls inside the server and their recent peak (see the module doc). Called on the event
    loop: ``arrived`` when a call enters the server, ``answered`` when it leaves (answered,
    failed or cancelled)."""

    def __init__(
        self, hold_s: float = HOLD_S, window_s: float = WINDOW_S, probe_s: float = PROBE_S
    ):
        self.hold_s = hold_s
        self.window_s = window_s
        self.probe_s = probe_s
        self.inside = 0
        self._peak = 0  # the most inside at once in the current window
        self._previous_peak = 0  # ... and in the window before it
        self._window_end = 0.0
        self._probe_end = 0.0  # a probe holds batches until then
        self._next_probe = 0.0

    def arrived(self, now: float) -> None:
        self.inside += 1
        if now >= self._window_end:
            self._rotate(now)
        if self.inside > self._peak:
            self._peak = self.inside

    def answered(self, now: float) -> None:
        self.inside -= 1

    def _rotate(self, now: float) -> None:
        skipped = now >= self._window_end + self.window_s  # a whole window without calls
        self._previous_peak = 0 if skipped else self._peak
        self._peak = self.inside
        self._window_end = now + self.window_s

    @property
    def peak(self) -> int:
        return max(self._peak, self._previous_peak)

    def expected(self, now: float) -> bool:
        """Whether more calls are expected soon: fewer inside than the recent peak, or a probe
        (a call is inside, the peak is 1, and no probe ran for ``probe_s``)."""
        if now >= self._window_end:
            self._rotate(now)
        inside = self.inside
        if inside < max(self._peak, self._previous_peak) or now < self._probe_end:
            return True
        if inside == 1 and now >= self._next_probe:
            self._probe_end = now + self.hold_s
            self._next_probe = now + self.probe_s
            return True
        return False

    def hold_until(self, now: float, oldest: float) -> float:
        """Until when a batch whose oldest request arrived at ``oldest`` should wait (0: not)."""
        return oldest + self.hold_s if self.expected(now) else 0.0


class Arrivals:
    """The server's view of requests on their way, shared by its batchers."""

    def __init__(self):
        self.http_pending = 0
        self.grpc = ConcurrencyForecast()

    def coming(self, now: float) -> bool:
        """Whether another request is expected to reach a batcher soon."""
        return self.http_pending > 0 or self.grpc.expected(now)

    def hold_until(self, now: float, oldest: float) -> float:
        """Until when a batch should wait for company (0: flush in the next turn)."""
        return self.grpc.hold_until(now, oldest)

"""Where benchmark keys come from: a distribution over a table's keys, or a recorded trace.

Distributions (``--distribution``), as hps_profiler's key generator:

- ``uniform``: every key equally likely;
- ``zipf:ALPHA``: the key of rank r (ranks over a random permutation of the table's keys, so
  hot keys are spread over the key space) has probability proportional to ``1 / r**ALPHA``;
- ``hotkey:PCT:COVERAGE``: a fraction PCT of the keys (picked at random) receives a fraction
  COVERAGE of the traffic, uniformly within the hot and within the cold keys. Both are
  fractions (``hotkey:0.2:0.8``) or percentages (``hotkey:20%:80%``).

Traces (``--keys-from FILE``): a ``.npy`` array of integers, or a text file with one key per
line (blank lines and lines starting with ``#`` are skipped). Invalid content is an
``InvalidInputError`` at ``file:line`` (text) or ``file[index]`` (npy). A trace is replayed in
order, in consecutive batches, wrapping around at its end.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.errors import InvalidInputError

INT64_MAX = 2**63 - 1
UINT32_MAX = 2**32 - 1


@dataclass(frozen=True)
class Distribution:
    """A parsed ``--distribution``: ``kind`` is uniform, zipf or hotkey."""

    kind: str
    alpha: float = 0.0
    hot_fraction: float = 0.0
    coverage: float = 0.0

    @property
    def spec(self) -> str:
        if self.kind == "zipf":
            return f"zipf:{self.alpha:g}"
        if self.kind == "hotkey":
            return f"hotkey:{self.hot_fraction:g}:{self.coverage:g}"
        return self.kind

    def to_dict(self) -> dict:
        doc: dict = {"kind": self.kind, "spec": self.spec}
        if self.kind == "zipf":
            doc["alpha"] = self.alpha
        if self.kind == "hotkey":
            doc.update(hot_fraction=self.hot_fraction, coverage=self.coverage)
        return doc


def _fraction(text: str, what: str, spec: str) -> float:
    percent = text.endswith("%")
    try:
        value = float(text[:-1] if percent else text)
    except ValueError:
        value = math.nan
    if percent:
        value /= 100.0
    if not (0.0 < value <= 1.0):
        raise InvalidInputError(
            f"the {what} of '{spec}' must be a fraction in (0, 1] or a "
            f"percentage in (0%, 100%], got '{text}'",
            location="--distribution",
            hint="e.g. hotkey:0.2:0.8",
        )
    return value


def parse_distribution(spec: str) -> Distribution:
    """``uniform`` | ``zipf:ALPHA`` | ``hotkey:PCT:COVERAGE`` (see the module doc)."""
    parts = spec.strip().split(":")
    kind = parts[0].lower()
    hint = "uniform, zipf:ALPHA (e.g. zipf:1.05) or hotkey:PCT:COVERAGE (e.g. hotkey:0.2:0.8)"
    if kind == "uniform" and len(parts) == 1:
        return Distribution("uniform")
    if kind == "zipf" and len(parts) == 2:
        try:
            alpha = float(parts[1])
        except ValueError:
            alpha = math.nan
        if not (alpha > 0.0 and math.isfinite(alpha)):
            raise InvalidInputError(
                f"the exponent of '{spec}' must be a number > 0",
                location="--distribution",
                hint="e.g. zipf:1.05",
            )
        return Distribution("zipf", alpha=alpha)
    if kind == "hotkey" and len(parts) == 3:
        return Distribution(
            "hotkey",
            hot_fraction=_fraction(parts[1], "hot key share", spec),
            coverage=_fraction(parts[2], "coverage", spec),
        )
    raise InvalidInputError(
        f"unknown key distribution '{spec}'", location="--distribution", hint=hint
    )


class DistributionKeys:
    """Draws batches of a table's keys with a ``Distribution``.

    The permutation and the Zipf CDF are computed once; ``spawn`` makes an independent stream
    over the same arrays (one per thread: a NumPy Generator is not thread-safe).
    """

    def __init__(
        self, keys: np.ndarray, dist: Distribution, seed: int = 0, *, _shared: tuple | None = None
    ):
        self.dist = dist
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        if _shared is not None:
            self.keys, self._cdf, self._hot = _shared
        else:
            keys = np.asarray(keys, dtype=np.int64)
            if keys.size == 0:
                raise InvalidInputError("the table has no keys to draw from", location="keys")
            # Ranks live in a random permutation, so hot keys are not the first rows of the file.
            self.keys = keys[np.random.default_rng(seed ^ 0x5EED).permutation(keys.size)]
            self._cdf = None
            self._hot = 0
            n = self.keys.size
            if dist.kind == "zipf":
                weights = np.arange(1, n + 1, dtype=np.float64) ** -dist.alpha
                self._cdf = np.cumsum(weights)
                self._cdf /= self._cdf[-1]
            elif dist.kind == "hotkey":
                self._hot = min(n, max(1, int(round(dist.hot_fraction * n))))
        self._draws = 0

    @property
    def num_keys(self) -> int:
        return int(self.keys.size)

    def spawn(self, stream: int) -> "DistributionKeys":
        return DistributionKeys(
            self.keys,
            self.dist,
            self.seed + 1000003 * (stream + 1),
            _shared=(self.keys, self._cdf, self._hot),
        )

    def ranks(self, count: int) -> np.ndarray:
        """Ranks (indices into ``keys``) of the next ``count`` draws."""
        n = self.keys.size
        rng = self._rng
        if self.dist.kind == "uniform":
            return rng.integers(0, n, count)
        if self.dist.kind == "zipf":
            return np.minimum(np.searchsorted(self._cdf, rng.random(count), side="right"), n - 1)
        hot = self._hot
        if hot >= n:
            return rng.integers(0, n, count)
        is_hot = rng.random(count) < self.dist.coverage
        out = rng.integers(hot, n, count)
        out[is_hot] = rng.integers(0, hot, int(is_hot.sum()))
        return out

    def next_batch(self, count: int) -> np.ndarray:
        self._draws += count
        return self.keys[self.ranks(count)]

    def ideal_hit_rate(self, slots: int) -> float:
        """The share of the traffic that the ``slots`` most likely keys carry (what a cache
        holding exactly those keys would hit)."""
        n = self.keys.size
        slots = min(max(int(slots), 0), n)
        if slots == 0:
            return 0.0
        if self.dist.kind == "uniform":
            return slots / n
        if self.dist.kind == "zipf":
            return float(self._cdf[slots - 1])
        hot = self._hot
        cov = self.dist.coverage if hot < n else 1.0
        if slots <= hot:
            return cov * slots / hot
        return cov + (1.0 - cov) * (slots - hot) / (n - hot)

    def describe(self) -> dict:
        return {
            "source": "distribution",
            **self.dist.to_dict(),
            "table_keys": self.num_keys,
            "seed": self.seed,
        }


@dataclass
class Trace:
    """The keys of a trace file; ``lines`` maps each key to its line (text files)."""

    path: Path
    keys: np.ndarray
    lines: np.ndarray | None = None

    def where(self, index: int) -> str:
        if self.lines is None:
            return f"{self.path}[{index}]"
        return f"{self.path}:{int(self.lines[index])}"

    def check_range(self, uint32: bool) -> None:
        """InvalidInputError at the first key a table with these key widths cannot hold."""
        if uint32:
            bad = np.flatnonzero((self.keys < 0) | (self.keys > UINT32_MAX))
            if bad.size:
                i = int(bad[0])
                raise InvalidInputError(
                    f"key {int(self.keys[i])} does not fit uint32 (the config has "
                    "supportlonglong: false)",
                    location=self.where(i),
                    hint="use a trace of 32-bit keys, or a config with supportlonglong: true",
                )


def load_trace(path: Path | str) -> Trace:
    """Read a key trace (``.npy`` of integers, or text with one key per line)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(
            "the key trace does not exist (or is not a file)", location=str(path)
        )
    if path.suffix.lower() == ".npy":
        trace = _load_npy(path)
    else:
        trace = _load_text(path)
    if trace.keys.size == 0:
        raise InvalidInputError(
            "the key trace holds no keys",
            location=str(path),
            hint="one integer key per line, or a 1-D .npy of int64",
        )
    return trace


def _load_npy(path: Path) -> Trace:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInputError(
            f"not a readable .npy array: {exc}",
            location=str(path),
            hint="save the trace with numpy.save(path, keys.astype('int64'))",
        ) from None
    if not isinstance(array, np.ndarray) or array.ndim != 1:
        raise InvalidInputError(
            f"a key trace must be a 1-D array, got shape {getattr(array, 'shape', '?')}",
            location=str(path),
            hint="flatten it: numpy.save(path, keys.reshape(-1))",
        )
    if array.dtype.kind not in "iu":
        raise InvalidInputError(
            f"a key trace must hold integers, got dtype {array.dtype}",
            location=str(path),
            hint="save keys as int64",
        )
    if array.dtype == np.uint64 and array.size:
        big = np.flatnonzero(array > INT64_MAX)
        if big.size:
            raise InvalidInputError(
                f"key {int(array[big[0]])} does not fit int64", location=f"{path}[{int(big[0])}]"
            )
    return Trace(path, np.array(array, dtype=np.int64))


def _load_text(path: Path) -> Trace:
    keys: list[int] = []
    lines: list[int] = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.strip()
            if not text or text.startswith(b"#"):
                continue
            try:
                value = int(text.decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                shown = text[:40].decode("utf-8", "replace")
                raise InvalidInputError(
                    f"not an integer key: '{shown}'",
                    location=f"{path}:{number}",
                    hint="one decimal integer key per line",
                ) from None
            if not -INT64_MAX - 1 <= value <= INT64_MAX:
                raise InvalidInputError(
                    f"key {value} does not fit int64", location=f"{path}:{number}"
                )
            keys.append(value)
            lines.append(number)
    return Trace(path, np.array(keys, dtype=np.int64), np.array(lines, dtype=np.int64))


class TraceKeys:
    """Replays a trace in order in consecutive batches, wrapping at its end (thread-safe: a
    shared cursor, so concurrent workers together replay the trace in order)."""

    def __init__(self, trace: Trace, start: int = 0):
        self.trace = trace
        self._pos = int(start) % trace.keys.size
        self._lock = threading.Lock()
        self.wraps = 0

    def spawn(self, stream: int) -> "TraceKeys":
        return self  # one cursor for everyone

    def next_batch(self, count: int) -> np.ndarray:
        keys = self.trace.keys
        with self._lock:
            start = self._pos
            end = start + count
            if end <= keys.size:
                out = keys[start:end].copy()
            else:
                idx = np.arange(start, end) % keys.size
                out = keys[idx]
            self.wraps += end // keys.size  # completed passes over the trace
            self._pos = end % keys.size
        return out

    def describe(self) -> dict:
        return {
            "source": "trace",
            "path": str(self.trace.path),
            "trace_keys": int(self.trace.keys.size),
            "distinct_keys": int(np.unique(self.trace.keys).size),
        }

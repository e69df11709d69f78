"""hps bench's key sources (distributions, trace replay and its errors) and its statistics
(nearest-rank percentiles, perf_analyzer's stability rule, the concurrency range)."""

from __future__ import annotations

import numpy as np
import pytest
from hps_cli.runtime.errors import ExitCode, InvalidInputError

from hps_cli.bench.keys import (
    DistributionKeys,
    Trace,
    TraceKeys,
    load_trace,
    parse_distribution,
)
from hps_cli.bench.serve_bench import _Record, _windows, parse_concurrency_range
from hps_cli.bench.stats import Window, is_stable, latency_summary, nearest_rank

# ------------------------------------------------------------------------------ distributions


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("uniform", ("uniform", 0, 0, 0)),
        ("zipf:1.05", ("zipf", 1.05, 0, 0)),
        ("ZIPF:2", ("zipf", 2.0, 0, 0)),
        ("hotkey:0.2:0.8", ("hotkey", 0, 0.2, 0.8)),
        ("hotkey:20%:80%", ("hotkey", 0, 0.2, 0.8)),
        ("hotkey:1:1", ("hotkey", 0, 1.0, 1.0)),
    ],
)
def test_distribution_specs(spec, expected):
    d = parse_distribution(spec)
    kind, alpha, hot, coverage = expected
    assert d.kind == kind and d.alpha == pytest.approx(alpha)
    assert d.hot_fraction == pytest.approx(hot) and d.coverage == pytest.approx(coverage)
    assert parse_distribution(d.spec) == d  # the spec round-trips


@pytest.mark.parametrize(
    "spec",
    [
        "zipf",
        "zipf:0",
        "zipf:-1",
        "zipf:x",
        "hotkey:0.2",
        "hotkey:0:0.8",
        "hotkey:0.2:1.5",
        "hotkey:120%:80%",
        "normal",
        "uniform:3",
        "",
    ],
)
def test_bad_distribution_specs(spec):
    with pytest.raises(InvalidInputError) as info:
        parse_distribution(spec)
    assert info.value.location == "--distribution"


def _draw(spec: str, n_keys: int = 10_000, draws: int = 200_000, seed: int = 3):
    keys = np.arange(1_000_000, 1_000_000 + n_keys, dtype=np.int64)
    gen = DistributionKeys(keys, parse_distribution(spec), seed)
    return gen, gen.next_batch(draws)


def test_every_draw_is_a_table_key_and_streams_repeat_by_seed():
    for spec in ("uniform", "zipf:1.2", "hotkey:0.1:0.9"):
        gen, batch = _draw(spec, draws=5000)
        assert batch.dtype == np.int64
        assert np.isin(batch, gen.keys).all()
        again = _draw(spec, draws=5000)[1]
        assert np.array_equal(batch, again)
        assert not np.array_equal(batch, _draw(spec, draws=5000, seed=4)[1])


def test_hotkey_gives_its_coverage_to_its_share_of_keys():
    gen, batch = _draw("hotkey:0.05:0.8")
    hot = set(gen.keys[:500].tolist())  # 5 % of 10,000 keys: ranks 0..499 of the permutation
    share = np.isin(batch, list(hot)).mean()
    assert abs(share - 0.8) < 0.01
    # within the hot set, uniform: every hot key is drawn, none far more often than the rest
    _, counts = np.unique(batch[np.isin(batch, list(hot))], return_counts=True)
    assert counts.size == 500 and counts.max() < 2.2 * counts.mean()
    assert gen.ideal_hit_rate(500) == pytest.approx(0.8)
    assert gen.ideal_hit_rate(10_000) == pytest.approx(1.0)


def test_zipf_follows_its_ranks_and_hot_keys_are_spread():
    alpha = 1.1
    gen, batch = _draw(f"zipf:{alpha}")
    ranks = np.arange(1, 10_001, dtype=np.float64)
    p = ranks**-alpha / (ranks**-alpha).sum()
    counts = np.bincount(np.searchsorted(np.sort(gen.keys), batch), minlength=10_000)
    by_rank = counts[np.searchsorted(np.sort(gen.keys), gen.keys)]  # counts in rank order
    for r in (0, 1, 9, 99):
        expected = p[r] * batch.size
        assert abs(by_rank[r] - expected) < 5 * np.sqrt(expected) + 1
    top100 = by_rank[:100].sum() / batch.size
    assert top100 == pytest.approx(p[:100].sum(), abs=0.01)
    assert gen.ideal_hit_rate(100) == pytest.approx(p[:100].sum())
    # the hottest keys are not simply the first keys of the file
    assert not np.array_equal(np.sort(gen.keys[:100]), np.arange(1_000_000, 1_000_100))


def test_uniform_is_flat():
    _, batch = _draw("uniform", n_keys=100, draws=100_000)
    counts = np.unique(batch, return_counts=True)[1]
    assert counts.size == 100
    chi2 = ((counts - 1000.0) ** 2 / 1000.0).sum()
    assert chi2 < 160  # 99 degrees of freedom: p < 1e-4 above this


def test_spawned_streams_share_keys_but_differ():
    gen, _ = _draw("zipf:1.0", draws=1)
    a, b = gen.spawn(0), gen.spawn(1)
    assert a.keys is gen.keys and b.keys is gen.keys
    assert not np.array_equal(a.next_batch(100), b.next_batch(100))


# -------------------------------------------------------------------------------------- traces


def test_text_trace_skips_blanks_and_comments(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("# a trace\n5\n\n  -3 \n9223372036854775807\n5\n")
    trace = load_trace(path)
    assert trace.keys.tolist() == [5, -3, 2**63 - 1, 5]
    assert trace.where(1) == f"{path}:4"


def test_trace_replay_is_in_order_and_wraps(tmp_path):
    path = tmp_path / "keys.npy"
    np.save(path, np.arange(10, dtype=np.int32))
    replay = TraceKeys(load_trace(path))
    assert replay.next_batch(4).tolist() == [0, 1, 2, 3]
    assert replay.next_batch(8).tolist() == [4, 5, 6, 7, 8, 9, 0, 1]
    assert replay.next_batch(2).tolist() == [2, 3]
    assert replay.wraps == 1
    assert replay.describe()["distinct_keys"] == 10


@pytest.mark.parametrize(
    "content, where, words",
    [
        ("1\n2\nabc\n", ":3", "not an integer key: 'abc'"),
        ("1\n\n1.5\n", ":3", "not an integer key"),
        ("7\n99999999999999999999\n", ":2", "does not fit int64"),
        ("# only a comment\n\n", "", "holds no keys"),
    ],
)
def test_text_trace_errors_name_the_line(tmp_path, content, where, words):
    path = tmp_path / "t.txt"
    path.write_text(content)
    with pytest.raises(InvalidInputError) as info:
        load_trace(path)
    assert info.value.location == f"{path}{where}"
    assert words in info.value.message


@pytest.mark.parametrize(
    "array, words",
    [
        (np.zeros((3, 2), np.int64), "1-D"),
        (np.array([1.0, 2.0]), "integers"),
        (np.array([2**63], np.uint64), "does not fit int64"),
        (np.empty(0, np.int64), "holds no keys"),
    ],
)
def test_npy_trace_errors(tmp_path, array, words):
    path = tmp_path / "t.npy"
    np.save(path, array)
    with pytest.raises(InvalidInputError) as info:
        load_trace(path)
    assert words in info.value.message and str(path) in str(info.value)


def test_missing_and_corrupt_traces(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_trace(tmp_path / "nope.txt")
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy at all")
    with pytest.raises(InvalidInputError, match="not a readable .npy"):
        load_trace(bad)


def test_uint32_range_check_names_the_line(tmp_path):
    trace = Trace(tmp_path / "t.txt", np.array([1, 2**32, 3]), np.array([1, 5, 6]))
    with pytest.raises(InvalidInputError) as info:
        trace.check_range(uint32=True)
    assert info.value.location == f"{tmp_path / 't.txt'}:5"
    trace.check_range(uint32=False)


def test_cli_trace_error_is_one_line_exit_3(tmp_path, hps):
    path = tmp_path / "t.txt"
    path.write_text("1\n2\nthree\n")
    res = hps("bench", "cache-size", "--keys-from", str(path), "--dim", "8")
    assert res.returncode == ExitCode.INVALID
    lines = res.stderr.strip().splitlines()
    assert lines[0] == f"error: {path}:3: not an integer key: 'three'"
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("sub", ["lookup", "serve", "cache-size"])
def test_subcommands_have_help(hps, sub):
    res = hps("bench", sub, "--help")
    assert res.returncode == 0 and f"Usage: hps bench {sub}" in res.stdout


def test_cli_usage_errors(hps):
    res = hps("bench", "cache-size", "--dim", "8")
    assert res.returncode == ExitCode.USAGE and "--config, --keys-from or --rows" in res.stderr
    res = hps(
        "bench",
        "cache-size",
        "--rows",
        "100",
        "--dim",
        "8",
        "--distribution",
        "zipf:1",
        "--keys-from",
        "x.txt",
    )
    assert res.returncode == ExitCode.USAGE and "not both" in res.stderr
    res = hps("bench", "cache-size", "--rows", "100", "--dim", "8", "--distribution", "zipf")
    assert res.returncode == ExitCode.INVALID and "zipf:1.05" in res.stderr


# ---------------------------------------------------------------------------------- statistics


def test_nearest_rank_percentiles():
    values = np.arange(1, 101, dtype=float)  # 1..100
    assert [nearest_rank(values, q) for q in (50, 90, 95, 99, 100)] == [50, 90, 95, 99, 100]
    assert nearest_rank(np.array([7.0]), 99) == 7.0
    summary = latency_summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (summary["min"], summary["p50"], summary["max"], summary["count"]) == (1, 3, 5, 5)
    assert summary["mean"] == 3.0
    empty = latency_summary([])
    assert empty["count"] == 0 and empty["p99"] is None


def test_percentiles_are_ordered_on_random_samples(rng):
    for _ in range(20):
        s = latency_summary(rng.lognormal(3, 1.5, int(rng.integers(1, 500))))
        assert s["min"] <= s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]


def _window(throughput: float, latency: float) -> Window:
    w = Window(0.0, 1.0)
    w.latencies_us = [latency] * int(throughput)
    return w


def test_stability_rule_last_three_windows_within_percentage():
    steady = [
        _window(100, 50),
        _window(1000, 10),
        _window(100, 50),
        _window(105, 52),
        _window(96, 49),
    ]
    assert is_stable(steady, 10)
    assert not is_stable(steady[:2], 10)  # fewer than 3 windows
    assert not is_stable(steady[:4] + [_window(120, 50)], 10)  # throughput off by > 10 %
    assert not is_stable(steady[:4] + [_window(100, 60)], 10)  # latency off by > 10 %
    assert is_stable(steady[:4] + [_window(120, 50)], 20)
    assert not is_stable(steady[:4] + [Window(0.0, 1.0)], 50)  # an empty window


def test_windows_count_errors_apart_from_latencies():
    records = [
        _Record(0.1, 5, 1, 1, True),  # recorded before the first bound: warm-up
        _Record(0.5, 100, 10, 5, True),
        _Record(0.7, 999, 0, 0, False),
        _Record(1.2, 200, 20, 5, True),
        _Record(1.9, 300, 30, 5, True),
        _Record(2.5, 1, 1, 1, True),
    ]  # after the last bound: not counted
    stats = [
        {f: (0, 0) for f in ("queue", "compute_input", "compute_infer", "compute_output")},
        {f: (2, 2000) for f in ("queue", "compute_input", "compute_infer", "compute_output")},
        None,
    ]
    w = _windows(records, [0.0, 1.0, 2.0], [1, 3, 5], stats)
    assert [x.completed for x in w] == [1, 2] and [x.errors for x in w] == [1, 0]
    assert w[0].latencies_us == [100] and w[1].latencies_us == [200, 300]
    assert w[0].server["queue"] == (2, 2000) and w[1].server is None
    assert w[1].send_us == 50 and w[1].recv_us == 10 and w[0].seconds == 1.0


@pytest.mark.parametrize(
    "text, levels",
    [
        ("1", (1,)),
        ("1:16", (1, 2, 4, 8, 16)),
        ("3:20", (3, 6, 12, 20)),
        ("2:8:3", (2, 5, 8)),
        ("4:4", (4,)),
    ],
)
def test_concurrency_range(text, levels):
    assert parse_concurrency_range(text) == levels


@pytest.mark.parametrize("text", ["0:4", "4:2", "a:b", "1:2:3:4", ""])
def test_bad_concurrency_range(text):
    with pytest.raises(InvalidInputError):
        parse_concurrency_range(text)

"""Bench reports as rich tables, CSV and plots (the JSON document is the report itself).

The serve CSV has exactly perf_analyzer's columns (``-f`` file), latencies in microseconds,
rows sorted by throughput as perf_analyzer writes them; ``verbose`` appends our own columns.
"""

from __future__ import annotations

import csv
import io

from ..common.units import human_bytes

PERF_ANALYZER_COLUMNS = (
    "Concurrency",
    "Inferences/Second",
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
)
HIT_RATE_COLUMNS = (
    "GPU Cache Hit Rate",
    "Volatile Hit Rate",
    "Persistent Hit Rate",
    "Default Rate",
)
SERVE_EXTRA_COLUMNS = (
    "Keys/Second",
    "Avg latency",
    "Max latency",
    "Errors",
    "Stable",
    *HIT_RATE_COLUMNS,
)
LOOKUP_COLUMNS = (
    "Batch Size",
    "Lookups/Second",
    "Keys/Second",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
    "Max latency",
    *HIT_RATE_COLUMNS,
    "Kernel Share of Gather Floor",
)
CACHE_SIZE_COLUMNS = (
    "gpucacheper",
    "Slots",
    "Sets",
    "Hit Rate",
    "Ideal Hit Rate",
    "Memory Bytes per GPU",
)


def _us(value) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:,.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:,.1f} K"
    return f"{value:,.1f}"


def _grid(title: str, columns: list[tuple[str, str]]):
    from rich.table import Table

    grid = Table(title=title, title_justify="left", show_edge=False)
    for name, justify in columns:
        grid.add_column(name, justify=justify)
    return grid


def keys_text(keys: dict) -> str:
    """The key source of a report in words (its ``keys`` document)."""
    if keys.get("source") == "trace":
        return (
            f"trace {keys['path']} ({keys['trace_keys']:,} keys, "
            f"{keys['distinct_keys']:,} distinct)"
        )
    spec = keys.get("spec", "uniform")
    if "key_space" in keys:
        return f"keys {spec} over 0..{keys['key_space'] - 1:,} (--key-space)"
    tables = keys.get("tables")
    if tables and len(tables) == 1:
        only = tables[0]
        return f"keys {spec} over the {only['keys']:,} keys of table {only['name']} (--config)"
    if tables:
        each = ", ".join(f"{t['name']}: {t['keys']:,}" for t in tables)
        return f"keys {spec} over each table's keys ({each}; --config)"
    if "table_keys" in keys:
        return f"keys {spec} over the table's {keys['table_keys']:,} keys"
    return f"keys {spec}"


def hit_rate_text(hit: dict) -> str:
    """``GPU cache 12.50%, volatile ...``: where the keys were answered."""
    return ", ".join(
        f"{name} {_pct(hit[tier])}"
        for name, tier in (
            ("GPU cache", "gpu_cache"),
            ("volatile", "volatile"),
            ("persistent", "persistent"),
            ("default", "default"),
        )
    )


def lookup_table(report: dict):
    tables = ", ".join(f"{t['name']} ({t['rows']:,} x {t['dim']})" for t in report["tables"])
    keys = report["keys"]
    if keys.get("source") == "distribution":
        whose = "the table's" if len(report["tables"]) == 1 else "each table's"
        keys_line = f"keys {keys['spec']} over {whose} keys"
    else:
        keys_line = keys_text(keys)
    grid = _grid(
        f"hps bench lookup: model {report['model']}, {tables}\n{keys_line}",
        [
            ("batch", "right"),
            ("lookups/s", "right"),
            ("keys/s", "right"),
            ("p50 us", "right"),
            ("p90 us", "right"),
            ("p95 us", "right"),
            ("p99 us", "right"),
            ("max us", "right"),
            ("GPU cache", "right"),
            ("volatile", "right"),
            ("persistent", "right"),
            ("default", "right"),
            ("kernel/gather", "right"),
        ],
    )
    for row in report["rows"]:
        lat, hit, kern = row["latency_us"], row["hit_rate"], row["gpu_kernel"]
        share = kern["kernel_share_of_gather_floor"]
        grid.add_row(
            f"{row['batch_size']:,}",
            _rate(row["throughput"]["lookups_per_s"]),
            _rate(row["throughput"]["keys_per_s"]),
            _us(lat["p50"]),
            _us(lat["p90"]),
            _us(lat["p95"]),
            _us(lat["p99"]),
            _us(lat["max"]),
            _pct(hit["gpu_cache"]),
            _pct(hit["volatile"]),
            _pct(hit["persistent"]),
            _pct(hit["default"]),
            "-" if share is None else f"{share:.2f} at {kern.get('hit_rate', 0):.0%} hits",
        )
    return grid


def serve_hit_rate_source(report: dict) -> str:
    """Where the serve report's hit rates come from, or why they were not measured."""
    why = report.get("hit_rate_not_measured")
    if why is not None:
        return f"hit rate: not measured ({why})"
    return f"hit rates from {report['metrics_url']} over the reported windows"


def serve_table(report: dict):
    measured = report.get("hit_rate_not_measured") is None
    hit_columns = [
        ("GPU cache", "right"),
        ("volatile", "right"),
        ("persistent", "right"),
        ("default", "right"),
    ]
    grid = _grid(
        f"hps bench serve: {report['protocol']} {report['url']}, model "
        f"{report['model']}, {report['keys_per_request']} keys per request\n"
        f"{keys_text(report['keys'])}\n{serve_hit_rate_source(report)}",
        [
            ("concurrency", "right"),
            ("infer/s", "right"),
            ("keys/s", "right"),
            ("avg us", "right"),
            ("p50 us", "right"),
            ("p90 us", "right"),
            ("p95 us", "right"),
            ("p99 us", "right"),
            *(hit_columns if measured else []),
            ("errors", "right"),
            ("stable", "center"),
            ("windows", "right"),
        ],
    )
    for level in report["levels"]:
        lat, hit = level["latency_us"], level["hit_rate"]
        hits = [_pct(hit[t]) for t in ("gpu_cache", "volatile", "persistent", "default")]
        grid.add_row(
            str(level["concurrency"]),
            _rate(level["throughput_infer_per_sec"]),
            _rate(level["throughput_keys_per_sec"]),
            _us(lat["mean"]),
            _us(lat["p50"]),
            _us(lat["p90"]),
            _us(lat["p95"]),
            _us(lat["p99"]),
            *(hits if measured else []),
            str(level["errors"]),
            "yes" if level["stable"] else "[yellow]no[/yellow]",
            str(level["trials"]),
        )
    return grid


def cache_size_table(report: dict):
    keys = report["keys"]
    what = keys.get("path") or keys.get("spec")
    grid = _grid(
        f"hps bench cache-size: {what}, table of {report['rows']:,} rows x dim "
        f"{report['dim']}, batches of {report['batch_size']}",
        [
            ("gpucacheper", "right"),
            ("slots", "right"),
            ("hit rate", "right"),
            ("ideal", "right"),
            ("memory/GPU", "right"),
            ("", "left"),
        ],
    )
    rows = list(report["curve"])
    smallest = report.get("smallest")
    for i, point in enumerate(rows):
        grid.add_row(
            f"{point['gpucacheper']:g}",
            f"{point['slots']:,}",
            _pct(point["hit_rate"]),
            _pct(point["ideal_hit_rate"]),
            human_bytes(point["memory_bytes_per_gpu"]),
            "",
            end_section=smallest is not None and i == len(rows) - 1,
        )
    if smallest is not None:
        grid.add_row(
            f"{smallest['gpucacheper']:g}",
            f"{smallest['slots']:,}",
            _pct(smallest["hit_rate"]),
            _pct(smallest["ideal_hit_rate"]),
            human_bytes(smallest["memory_bytes_per_gpu"]),
            f"smallest for {report['target_hit_rate']:g}",
            style="bold",
        )
    return grid


def smallest_line(report: dict) -> str:
    smallest, target = report.get("smallest"), report.get("target_hit_rate")
    if target is None:
        return ""
    if smallest is None:
        return f"target hit rate {target:g}: {report.get('smallest_reason')}"
    devices = report.get("devices", 1)
    return (
        f"smallest gpucacheper reaching a hit rate of {target:g}: "
        f"{smallest['gpucacheper']:g} ({smallest['slots']:,} slots, hit rate "
        f"{smallest['hit_rate']:.4f}); cache memory {human_bytes(smallest['memory_bytes_per_gpu'])}"
        f" per GPU"
        + (
            f", {human_bytes(smallest['memory_bytes_total'])} on {devices} GPUs"
            if devices > 1
            else ""
        )
    )


def table_for(report: dict):
    return {"lookup": lookup_table, "serve": serve_table, "cache-size": cache_size_table}[
        report["kind"]
    ](report)


# ---------------------------------------------------------------------------------------- CSV


def csv_rows(report: dict, verbose: bool = False) -> tuple[tuple[str, ...], list[list]]:
    kind = report["kind"]
    if kind == "serve":
        header = PERF_ANALYZER_COLUMNS + (SERVE_EXTRA_COLUMNS if verbose else ())
        levels = sorted(report["levels"], key=lambda lv: lv["throughput_infer_per_sec"])
        rows = []
        for lv in levels:
            lat, client, server = lv["latency_us"], lv["client"], lv["server"] or {}
            row = [
                lv["concurrency"],
                round(lv["throughput_infer_per_sec"], 2),
                round(client["send_us"]),
                round(client["network_server_send_recv_us"]),
                round(server.get("queue_us", 0)),
                round(server.get("compute_input_us", 0)),
                round(server.get("compute_infer_us", 0)),
                round(server.get("compute_output_us", 0)),
                round(client["recv_us"]),
                *(round(lat[p] or 0) for p in ("p50", "p90", "p95", "p99")),
            ]
            if verbose:
                row += [
                    round(lv["throughput_keys_per_sec"], 2),
                    round(lat["mean"] or 0),
                    round(lat["max"] or 0),
                    lv["errors"],
                    int(lv["stable"]),
                    *(
                        "" if lv["hit_rate"][t] is None else round(lv["hit_rate"][t], 6)
                        for t in ("gpu_cache", "volatile", "persistent", "default")
                    ),
                ]
            rows.append(row)
        return header, rows
    if kind == "lookup":
        rows = []
        for r in report["rows"]:
            lat, hit = r["latency_us"], r["hit_rate"]
            share = r["gpu_kernel"]["kernel_share_of_gather_floor"]
            rows.append(
                [
                    r["batch_size"],
                    round(r["throughput"]["lookups_per_s"], 2),
                    round(r["throughput"]["keys_per_s"], 1),
                    *(round(lat[p], 1) for p in ("p50", "p90", "p95", "p99", "max")),
                    *(round(hit[t], 6) for t in ("gpu_cache", "volatile", "persistent", "default")),
                    "" if share is None else round(share, 4),
                ]
            )
        return LOOKUP_COLUMNS, rows
    rows = [
        [
            p["gpucacheper"],
            p["slots"],
            p["num_sets"],
            round(p["hit_rate"], 6),
            round(p["ideal_hit_rate"], 6),
            p["memory_bytes_per_gpu"],
        ]
        for p in report["curve"]
    ]
    return CACHE_SIZE_COLUMNS, rows


def csv_text(report: dict, verbose: bool = False) -> str:
    header, rows = csv_rows(report, verbose)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


# -------------------------------------------------------------------------------------- plots


def require_matplotlib() -> None:
    """DependencyMissingError unless matplotlib can be imported."""
    import importlib.util

    from ..runtime.errors import DependencyMissingError

    if importlib.util.find_spec("matplotlib") is None:
        raise DependencyMissingError("matplotlib", "dev", "hps bench --plot")


def plot(report: dict, dest, overwrite: bool = False) -> None:
    """Write a PNG: latency vs concurrency (serve), latency vs batch size (lookup), hit rate vs
    cache fraction (cache-size). Needs matplotlib."""
    from ..runtime.atomic import atomic_file

    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    kind = report["kind"]
    if kind == "cache-size":
        xs = [p["gpucacheper"] for p in report["curve"]]
        ax.plot(xs, [p["hit_rate"] for p in report["curve"]], "o-", label="hit rate (replay)")
        ax.plot(
            xs,
            [p["ideal_hit_rate"] for p in report["curve"]],
            "--",
            color="grey",
            label="ideal (most frequent keys)",
        )
        if report.get("smallest"):
            s = report["smallest"]
            ax.axhline(report["target_hit_rate"], color="red", lw=0.8, ls=":")
            ax.plot(
                [s["gpucacheper"]],
                [s["hit_rate"]],
                "r*",
                ms=12,
                label=f"smallest gpucacheper {s['gpucacheper']:g}",
            )
        ax.set_xlabel("cache fraction (gpucacheper)")
        ax.set_ylabel("hit rate")
        ax.set_ylim(0, 1.02)
        ax.set_title("hps bench cache-size")
    else:
        if kind == "serve":
            points = report["levels"]
            xs = [lv["concurrency"] for lv in points]
            throughput = [lv["throughput_infer_per_sec"] for lv in points]
            ax.set_xlabel("concurrency")
            ax.set_title(
                f"hps bench serve ({report['protocol']}, model {report['model']})\n"
                f"{keys_text(report['keys'])}",
                fontsize=9,
            )
            rate_label = "infer/s"
        else:
            points = report["rows"]
            xs = [r["batch_size"] for r in points]
            throughput = [r["throughput"]["keys_per_s"] for r in points]
            ax.set_xlabel("batch size (keys per table)")
            ax.set_title(f"hps bench lookup (model {report['model']})")
            rate_label = "keys/s"
        for p, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^-")):
            ax.plot(xs, [pt["latency_us"][p] for pt in points], style, label=f"{p} latency")
        ax.set_ylabel("latency (us)")
        if len(xs) > 1 and max(xs) / max(min(xs), 1) >= 8:
            ax.set_xscale("log", base=2)
        twin = ax.twinx()
        twin.plot(xs, throughput, "k--", alpha=0.6, label=rate_label)
        twin.set_ylabel(rate_label)
        twin.legend(loc="upper center")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if kind == "cache-size" else "upper left")
    fig.tight_layout()
    with atomic_file(dest, overwrite=overwrite) as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)

#!/usr/bin/env python3
"""Prints the results of scripts/bench-cluster.sh as a Markdown table.

usage: bench-table.py NAME=DIR[,DIR...] [NAME=DIR[,DIR...]]

Each DIR holds result-N.name (the workload's name and how it was sent) and
result-N.json (`kvstore-cli -w json bench` output) for N = 1, 2, ... With one
NAME: one row per workload. With two (say kvstore=... etcd=...): the
workloads side by side, with the first's throughput divided by the second's
and the latencies of both. Several DIRs for a NAME are rounds of the same
workloads: each figure is then the median over the rounds (a failed round
counts as missing), and the throughput column shows the range too.
"""
import json
import statistics
import sys
from pathlib import Path

FIGURES = ("throughput_ops_per_s", "latency_us_p50", "latency_us_p99", "latency_us_p99_9")


def load(directories):
    """[(workload, via, result or None)]; medians over the DIRs' rounds."""
    rounds = [load_round(directory) for directory in directories.split(",")]
    if any([row[:2] for row in other] != [row[:2] for row in rounds[0]] for other in rounds):
        sys.exit("bench-table: the rounds ran different workloads")
    merged = []
    for rows in zip(*rounds):
        name, via = rows[0][:2]
        results = [result for _, _, result in rows if result]
        if not results:
            merged.append((name, via, None))
            continue
        result = {figure: statistics.median(r[figure] for r in results) for figure in FIGURES}
        result["errors"] = sum(r["errors"] for r in results)
        throughputs = [r["throughput_ops_per_s"] for r in results]
        result["range"] = (min(throughputs), max(throughputs), len(results))
        merged.append((name, via, result))
    return merged


def load_round(directory):
    """[(workload, via, result or None)] in the order the workloads ran."""
    results = []
    index = 1
    while (Path(directory) / f"result-{index}.name").exists():
        name, via = (Path(directory) / f"result-{index}.name").read_text().splitlines()[:2]
        try:
            result = json.loads((Path(directory) / f"result-{index}.json").read_text())
        except (OSError, ValueError):
            result = None
        results.append((name, via, result))
        index += 1
    return results


def milliseconds(result, field):
    return f"{result[field] / 1000:.3f}" if result else ""


def throughput(result):
    if not result:
        return "failed"
    low, high, count = result["range"]
    if count == 1:
        return f"{result['throughput_ops_per_s']:.0f}"
    return f"{result['throughput_ops_per_s']:.0f} ({low:.0f}-{high:.0f})"


def print_table(rows, left_columns):
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for number, row in enumerate(rows):
        cells = [cell.ljust(width) if column < left_columns else cell.rjust(width)
                 for column, (cell, width) in enumerate(zip(row, widths))]
        print("| " + " | ".join(cells) + " |")
        if number == 0:
            print("|" + "|".join("-" * (width + 2) if column < left_columns else "-" * (width + 1) + ":"
                                 for column, width in enumerate(widths)) + "|")


def one(directory):
    rows = [("workload", "via", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "errors")]
    for name, via, result in load(directory):
        rows.append((name, via, throughput(result), milliseconds(result, "latency_us_p50"),
                     milliseconds(result, "latency_us_p99"), milliseconds(result, "latency_us_p99_9"),
                     str(result["errors"]) if result else ""))
    print_table(rows, 2)


def side_by_side(first_name, first_directory, second_name, second_directory):
    first, second = load(first_directory), load(second_directory)
    if [row[0] for row in first] != [row[0] for row in second]:
        sys.exit("bench-table: the two result sets ran different workloads")
    rows = [("workload", "via", f"{first_name} ops/s", f"{second_name} ops/s", "ratio",
             f"{first_name} p50 ms", f"{second_name} p50 ms",
             f"{first_name} p99 ms", f"{second_name} p99 ms", "errors")]
    for (name, via, a), (_, _, b) in zip(first, second):
        ratio = ""
        if a and b and b["throughput_ops_per_s"] > 0:
            ratio = f"{a['throughput_ops_per_s'] / b['throughput_ops_per_s']:.2f}x"
        errors = "/".join(str(r["errors"]) if r else "-" for r in (a, b))
        rows.append((name, via, throughput(a), throughput(b), ratio,
                     milliseconds(a, "latency_us_p50"), milliseconds(b, "latency_us_p50"),
                     milliseconds(a, "latency_us_p99"), milliseconds(b, "latency_us_p99"), errors))
    print_table(rows, 2)


def main(arguments):
    sets = [argument.split("=", 1) for argument in arguments]
    if not 1 <= len(sets) <= 2 or any(len(pair) != 2 for pair in sets):
        sys.exit(__doc__.strip().splitlines()[2])
    if len(sets) == 1:
        one(sets[0][1])
    else:
        side_by_side(sets[0][0], sets[0][1], sets[1][0], sets[1][1])


if __name__ == "__main__":
    main(sys.argv[1:])

#!/usr/bin/env python3
"""The parts of the single-client put latency floor that no server sets.

Measures, on this machine, the two primitives the floor of a replicated
write is made of and prints them as JSON:

- fdatasync_us: `pwrite` of one WAL record (353 bytes, one 256-byte put)
  into a file zero-filled ahead, as kvstore's WAL does, then `fdatasync`;
  the median of FSYNC_WRITES, in a temporary directory under DIRECTORY (the
  filesystem the benchmark's data directories are on).
- tcp_round_trip_us: a 64-byte ping-pong between two processes over
  loopback TCP with TCP_NODELAY; the median of ROUND_TRIPS after a warm-up.

usage: bench-floor.py DIRECTORY
"""

import json
import os
import socket
import statistics
import sys
import tempfile
import time

RECORD_BYTES = 353
PREALLOCATED_BYTES = 1024 * 1024
FSYNC_WRITES = 2000
PING_BYTES = 64
WARMUP_ROUND_TRIPS = 500
ROUND_TRIPS = 5000


def median_us(samples_ns):
    return round(statistics.median(samples_ns) / 1000, 1)


def fdatasync_us(directory):
    record = os.urandom(RECORD_BYTES)
    samples = []
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        path = os.path.join(scratch, "wal")
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.pwrite(descriptor, bytes(PREALLOCATED_BYTES), 0)
            os.fsync(descriptor)
            for index in range(FSYNC_WRITES):
                offset = (index * RECORD_BYTES) % (PREALLOCATED_BYTES - RECORD_BYTES)
                started = time.perf_counter_ns()
                os.pwrite(descriptor, record, offset)
                os.fdatasync(descriptor)
                samples.append(time.perf_counter_ns() - started)
        finally:
            os.close(descriptor)
    return median_us(samples)


def receive_exactly(connection, size):
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the echo side closed the connection")
        data += chunk
    return data


def tcp_round_trip_us():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:
        # The echo side: answers every ping, exits when the other side closes.
        connection, _ = listener.accept()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for _ in range(WARMUP_ROUND_TRIPS + ROUND_TRIPS):
                connection.sendall(receive_exactly(connection, PING_BYTES))
        finally:
            os._exit(0)
    listener.close()
    samples = []
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ping = os.urandom(PING_BYTES)
        for index in range(WARMUP_ROUND_TRIPS + ROUND_TRIPS):
            started = time.perf_counter_ns()
            connection.sendall(ping)
            receive_exactly(connection, PING_BYTES)
            if index >= WARMUP_ROUND_TRIPS:
                samples.append(time.perf_counter_ns() - started)
    os.waitpid(child, 0)
    return median_us(samples)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    print(
        json.dumps(
            {
                "fdatasync_us": fdatasync_us(sys.argv[1]),
                "tcp_round_trip_us": tcp_round_trip_us(),
                "record_bytes": RECORD_BYTES,
                "fsync_writes": FSYNC_WRITES,
                "round_trips": ROUND_TRIPS,
            }
        )
    )


if __name__ == "__main__":
    main()

"""gRPC C-core's xDS client (Python grpcio) as one side of pickwise's differential scenarios.

Runs `--workers` loops of grpc.health.v1.Health/Check against xds:///NAME (bootstrap in
GRPC_XDS_BOOTSTRAP_CONFIG) for `--duration-ms`, each call with a 1 s deadline and gRPC's
default fail-fast semantics (queued while connecting, failed at once in TRANSIENT_FAILURE),
exactly as the Rust side does. With `--header H --keys N` each call carries header H set to
one of N keys (worker w's i-th call uses key (w + i * workers) % N).

Prints "ready" once imported, reads the shared start (Unix ms) from stdin, then prints one JSON
list of [t_ms, backend, key] per call: t_ms from that start, backend the `x-backend` initial metadata or "!CODE" for an error.
"""

import argparse
import json
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main():
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("--duration-ms", type=int, required=True)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--header")
    p.add_argument("--keys", type=int, default=0)
    p.add_argument("--pace-ms", type=float, default=2.0)
    p.add_argument("--connect-timeout-ms", type=int, default=500)
    p.add_argument("--static-header", action="append", default=[])
    a = p.parse_args()
    # Imports done: say so, then read the shared start (Unix ms) the test chose.
    print("ready", flush=True)
    a.epoch_ms = float(sys.stdin.readline())
    # Reconnect timing as the Rust side's test builder sets it (50 ms .. 500 ms backoff, connect
    # timeout --connect-timeout-ms: C-core's connect deadline is at least the minimum backoff),
    # so both clients see a dead endpoint come back at the same pace.
    options = [
        ("grpc.initial_reconnect_backoff_ms", 50),
        ("grpc.min_reconnect_backoff_ms", a.connect_timeout_ms),
        ("grpc.max_reconnect_backoff_ms", 500),
    ]
    end = a.epoch_ms + a.duration_ms
    # Start together with the Rust side: the channel is created at the shared epoch.
    time.sleep(max(0.0, (a.epoch_ms - time.time() * 1000) / 1000))
    results = []
    lock = threading.Lock()
    with grpc.insecure_channel(a.target, options=options) as ch:
        stub = health_pb2_grpc.HealthStub(ch)

        def worker(w):
            i = 0
            out = []
            while time.time() * 1000 < end:
                key = None
                md = tuple(tuple(h.split("=", 1)) for h in a.static_header)
                if a.header and a.keys:
                    key = f"key-{(w + i * a.workers) % a.keys}"
                    md = md + ((a.header, key),)
                i += 1
                start = time.time() * 1000 - a.epoch_ms
                try:
                    _, c = stub.Check.with_call(health_pb2.HealthCheckRequest(), metadata=md, timeout=1.0)
                    backend = dict(c.initial_metadata()).get("x-backend", "?")
                except grpc.RpcError as e:
                    backend = "!" + e.code().name
                out.append([round(start, 1), backend, key])
                time.sleep(a.pace_ms / 1000)
            with lock:
                results.extend(out)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(a.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

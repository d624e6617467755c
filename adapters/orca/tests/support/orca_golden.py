#!/usr/bin/env python3
"""Golden wire bytes for pickwise-orca's hand-derived prost messages.

Serializes a few ORCA messages with the reference protobuf definitions of the `xds-protos`
package (cncf/xds, as grpcio ships it) and prints one `NAME HEX` line per vector, maps in key
order (deterministic serialization). adapters/orca/tests/golden.rs holds the same hex and
runs this script to compare.
"""
import sys

from google.protobuf import duration_pb2
from xds.data.orca.v3 import orca_load_report_pb2
from xds.service.orca.v3 import orca_pb2


def report(**kw):
    maps = {k: kw.pop(k) for k in ("request_cost", "utilization", "named_metrics") if k in kw}
    r = orca_load_report_pb2.OrcaLoadReport(**kw)
    for name, entries in maps.items():
        getattr(r, name).update(entries)
    return r


def vectors():
    yield "empty", report()
    # Envoy's exampleOrcaLoadReport (test/common/orca/orca_parser_test.cc).
    yield "envoy_example", report(
        cpu_utilization=0.7,
        application_utilization=0.8,
        mem_utilization=0.9,
        eps=2,
        rps_fractional=1000,
        named_metrics={"foo": 123, "bar": 0.2},
    )
    yield "all_fields", report(
        cpu_utilization=0.5,
        mem_utilization=0.25,
        rps=7,
        request_cost={"db": 1.5, "cache": 0.5},
        utilization={"gpu": 0.75},
        rps_fractional=12.5,
        eps=0.125,
        named_metrics={"x": -1.0},
        application_utilization=1.25,
    )
    yield "request", orca_pb2.OrcaLoadReportRequest(
        report_interval=duration_pb2.Duration(seconds=1, nanos=500_000_000),
        request_cost_names=["db", "cache"],
    )


def main():
    for name, msg in vectors():
        sys.stdout.write("%s %s\n" % (name, msg.SerializeToString(deterministic=True).hex()))


if __name__ == "__main__":
    main()

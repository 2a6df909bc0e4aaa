"""Reads `wgo report --parquet DIR` with pyarrow and checks it against the JSON report of
the same run: every table's rows, the events' partitions, ids, times and columns, the
messages' ends, the schema version in every file, row groups bounded, files private.
Prints the counts checked; exits non-zero with the first difference.

usage: check.py DIR report.json
"""

import json
import os
import stat
import sys

import pyarrow.dataset as ds
import pyarrow.parquet as pq

VERSION = "1"
ROW_GROUP_ROWS = 128 * 1024


def fail(msg):
    print(f"check.py: {msg}", file=sys.stderr)
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)


def endpoint(addr, port, proto):
    if proto in ("ICMP", "IP"):
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def main():
    root, report = sys.argv[1], sys.argv[2]
    with open(report) as f:
        r = json.load(f)
    with open(os.path.join(root, "_wgo_tables.json")) as f:
        manifest = json.load(f)
    expect(manifest["schema_version"] == int(VERSION), f"manifest version {manifest['schema_version']}")

    # Private, and the version in every file's metadata.
    files = 0
    for d, dirs, names in os.walk(root):
        expect(stat.S_IMODE(os.stat(d).st_mode) == 0o700, f"{d} is not 0700")
        for n in names:
            p = os.path.join(d, n)
            expect(stat.S_IMODE(os.stat(p).st_mode) == 0o600, f"{p} is not 0600")
            if n.endswith(".parquet"):
                files += 1
                md = pq.ParquetFile(p).metadata
                kv = md.metadata or {}
                expect(kv.get(b"wgo.schema_version") == VERSION.encode(), f"{p}: schema version {kv.get(b'wgo.schema_version')}")
                for g in range(md.num_row_groups):
                    expect(md.row_group(g).num_rows <= ROW_GROUP_ROWS, f"{p}: row group {g} has {md.row_group(g).num_rows} rows")
    expect(files == len(manifest["files"]), f"{files} files, the manifest lists {len(manifest['files'])}")

    def table(name):
        return ds.dataset(os.path.join(root, name), format="parquet", partitioning="hive").to_table()

    rows = {t["name"]: t["rows"] for t in manifest["tables"]}

    # Events: the same ids, nodes, times and columns as the JSON's, each node's in order.
    ev = table("events")
    expect(ev.num_rows == len(r["events"]) == rows["events"], f"events: {ev.num_rows} rows, the JSON has {len(r['events'])}")
    by_id = {e["id"]: e for e in r["events"]}
    cols = ev.to_pydict()
    names = [n["name"] for n in r["nodes"]]
    per_node = {}
    last_t = {}
    for k in range(ev.num_rows):
        e = by_id.get(cols["id"][k])
        expect(e is not None, f"event {cols['id'][k]} is not in the JSON")
        node = cols["node"][k]
        expect(node == e["node"] == names[cols["node_id"][k]], f"event {e['id']}: node {node}, JSON {e['node']}")
        for c in ("dir", "t_raw_ns", "t_ns", "cpu", "seq", "proto", "len", "label", "concurrent"):
            expect(cols[c][k] == e[c], f"event {e['id']}: {c} {cols[c][k]!r}, JSON {e[c]!r}")
        expect(endpoint(cols["src"][k], cols["sport"][k], e["proto"]) == e["src"], f"event {e['id']}: src {cols['src'][k]}, JSON {e['src']}")
        expect(endpoint(cols["dst"][k], cols["dport"][k], e["proto"]) == e["dst"], f"event {e['id']}: dst {cols['dst'][k]}, JSON {e['dst']}")
        fields = dict(cols["fields"][k])
        expect(fields == {f: str(v) for f, v in e["fields"].items()}, f"event {e['id']}: fields {fields}, JSON {e['fields']}")
        expect(cols["caplen"][k] <= cols["len"][k], f"event {e['id']}: caplen {cols['caplen'][k]} > len")
        per_node[node] = per_node.get(node, 0) + 1
        expect(last_t.get(node, cols["t_ns"][k]) <= cols["t_ns"][k], f"{node}'s events are out of order at {e['id']}")
        last_t[node] = cols["t_ns"][k]
    for n in r["nodes"]:
        expect(per_node.get(n["name"], 0) == n["events"], f"node {n['name']}: {per_node.get(n['name'], 0)} events, JSON {n['events']}")

    # Messages: the JSON's, in its order; each event's msg_id is one it is in.
    m = table("messages").to_pydict()
    expect(len(m["send"]) == len(r["messages"]) == rows["messages"], f"messages: {len(m['send'])}, JSON {len(r['messages'])}")
    for k, jm in enumerate(r["messages"]):
        expect((m["msg_id"][k], m["send"][k], m["recv"][k]) == (k, jm["send"], jm["recv"]), f"message {k}: {m['send'][k]}->{m['recv'][k]}, JSON {jm}")
        expect(m["src_node"][k] == by_id[jm["send"]]["node"] and m["dst_node"][k] == by_id[jm["recv"]]["node"], f"message {k}: nodes")
        expect(m["send_t_ns"][k] == by_id[jm["send"]]["t_ns"], f"message {k}: send_t_ns")
    with_msg = 0
    for k in range(ev.num_rows):
        mid = cols["msg_id"][k]
        if mid is not None:
            with_msg += 1
            end = m["send"][mid] if cols["dir"][k] == "send" else m["recv"][mid]
            expect(end == cols["id"][k], f"event {cols['id'][k]}: msg_id {mid} is not its message")
    ends = {jm["send"] for jm in r["messages"]} | {jm["recv"] for jm in r["messages"]}
    expect(with_msg == len(ends), f"{with_msg} events have a msg_id, {len(ends)} are in messages")

    # The other tables: the same rows and keys.
    an = table("anomalies").to_pydict()
    expect(len(an["kind"]) == len(r["anomalies"]) == rows["anomalies"], f"anomalies: {len(an['kind'])}, JSON {len(r['anomalies'])}")
    for k, ja in enumerate(r["anomalies"]):
        got = (an["kind"][k], an["events"][k], an["nodes"][k], an["text"][k], an["cause"][k], an["reason"][k])
        want = (ja["kind"], ja["events"], ja["nodes"], ja["text"], ja.get("cause"), ja.get("reason"))
        expect(got == want, f"anomaly {k}: {got}, JSON {want}")
        expect([[l["src"], l["dst"]] for l in an["links"][k]] == ja.get("links", []), f"anomaly {k}: links")
        span = None if an["span_start_ns"][k] is None else [an["span_start_ns"][k], an["span_end_ns"][k]]
        expect(span == ja["span_ns"], f"anomaly {k}: span {span}, JSON {ja['span_ns']}")
        if ja["kind"] == "clock_step":
            expect(an["step_size_ns"][k] == ja["size_ns"], f"anomaly {k}: step size")
    vi = table("violations").to_pydict()
    expect(len(vi["name"]) == len(r["violations"]) == rows["violations"], f"violations: {len(vi['name'])}, JSON {len(r['violations'])}")
    for k, jv in enumerate(r["violations"]):
        expect((vi["name"][k], vi["events"][k], vi["text"][k]) == (jv["name"], jv["events"], jv["text"]), f"violation {k}")
    fi = table("findings").to_pydict()
    expect(len(fi["rank"]) == len(r["findings"]) == rows["findings"], f"findings: {len(fi['rank'])}, JSON {len(r['findings'])}")
    for k, jf in enumerate(r["findings"]):
        got = (fi["rank"][k], fi["kind"][k], fi["nodes"][k], fi["text"][k], fi["evidence"][k], fi["islands"][k], fi["waiters"][k])
        want = (jf["rank"], jf["kind"], jf["nodes"], jf["text"], jf["evidence"], jf["islands"], jf["waiters"])
        expect(got == want, f"finding {k}: {got}, JSON {want}")
        expect([[l["src"], l["dst"]] for l in fi["links"][k]] == jf["links"], f"finding {k}: links")
        expect(fi["cause"][k] == (jf["cause"] or {}).get("kind"), f"finding {k}: cause")
    cp = table("clock_pairs").to_pydict()
    expect(len(cp["a"]) == len(r["clock_pairs"]) == rows["clock_pairs"], f"clock_pairs: {len(cp['a'])}, JSON {len(r['clock_pairs'])}")
    for k, jp in enumerate(r["clock_pairs"]):
        for c in ("a", "b", "messages", "offset_ns", "drift_ppm", "uncertainty_ns", "inconsistent", "dropped_bounds"):
            expect(cp[c][k] == jp[c], f"clock pair {k}: {c} {cp[c][k]}, JSON {jp[c]}")
    no = table("nodes").to_pydict()
    expect(no["name"] == names and len(names) == rows["nodes"], f"nodes: {no['name']}, JSON {names}")
    for k, jn in enumerate(r["nodes"]):
        for c in ("offset_ns", "uncertainty_ns", "quality", "events", "kernel_drops", "skipped"):
            expect(no[c][k] == jn[c], f"node {jn['name']}: {c} {no[c][k]}, JSON {jn[c]}")
        expect(no["reference"][k] == (jn["name"] == r["reference"]), f"node {jn['name']}: reference")
        expect(no["clock_steps"][k] == len(jn["clock_steps"]), f"node {jn['name']}: clock_steps")

    print(
        f"{ev.num_rows} events in {len(per_node)} node partitions, {len(r['messages'])} messages, "
        f"{len(r['anomalies'])} anomalies, {len(r['violations'])} violations, {len(r['findings'])} findings, "
        f"{len(r['clock_pairs'])} clock_pairs, {len(names)} nodes, {files} files"
    )


main()

"""Checks a `wgo report --perfetto` trace against Perfetto's official schema and the
JSON report of the same run.

Usage: check.py TRACE.pftrace REPORT.json

Decodes the trace with `perfetto_trace_pb2` (the schema the `perfetto` PyPI package
ships), resolves its interned names, and checks: one process track per node, named
after it; an instant per event, on its node, at its corrected time, with its raw time;
one flow per matched message, from its send to its receive; the lost messages, recorder
gaps, stalls and partition islands the report has; a slice per finding with its rank,
text and span; every timestamp in order per track, and every slice closed. Prints what
it counted; exits 1 naming the first thing wrong.
"""

import collections
import json
import sys

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

TE = pb.TrackEvent


def fail(msg):
    print(f"check.py: {msg}", file=sys.stderr)
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)


def main(trace_path, report_path):
    trace = pb.Trace()
    with open(trace_path, "rb") as f:
        trace.ParseFromString(f.read())
    with open(report_path) as f:
        report = json.load(f)
    packets = list(trace.packet)
    expect(packets, "the trace has no packets")
    first = packets[0]
    expect(first.sequence_flags & pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED,
           "the first packet does not clear the sequence's incremental state")

    tracks = {}
    event_names, arg_names, arg_strings = {}, {}, {}
    events = []  # (packet index, timestamp, TrackEvent)
    for k, p in enumerate(packets):
        expect(p.trusted_packet_sequence_id == 1, f"packet {k} is not on sequence 1")
        if p.HasField("interned_data"):
            for n in p.interned_data.event_names:
                event_names[n.iid] = n.name
            for n in p.interned_data.debug_annotation_names:
                arg_names[n.iid] = n.name
            for s in p.interned_data.debug_annotation_string_values:
                arg_strings[s.iid] = s.str.decode()
        if p.HasField("track_descriptor"):
            d = p.track_descriptor
            expect(d.uuid not in tracks, f"track {d.uuid} described twice")
            expect(not d.HasField("parent_uuid") or d.parent_uuid in tracks,
                   f"track {d.uuid}'s parent {d.parent_uuid} is not described before it")
            tracks[d.uuid] = d
        if p.HasField("track_event"):
            e = p.track_event
            expect(e.track_uuid in tracks, f"packet {k}: event on undescribed track {e.track_uuid}")
            expect(p.HasField("timestamp"), f"packet {k}: event without a timestamp")
            events.append((k, p.timestamp, e))

    def name_of(e):
        if e.HasField("name_iid"):
            expect(e.name_iid in event_names, f"event name iid {e.name_iid} not interned")
            return event_names[e.name_iid]
        return e.name

    def value(a):
        if a.HasField("string_value_iid"):
            expect(a.string_value_iid in arg_strings, f"string iid {a.string_value_iid} not interned")
            return arg_strings[a.string_value_iid]
        for f in ("string_value", "int_value", "uint_value", "bool_value", "double_value"):
            if a.HasField(f):
                return getattr(a, f)
        if len(a.dict_entries):
            return {arg_name(x): value(x) for x in a.dict_entries}
        return None

    def arg_name(a):
        if a.HasField("name_iid"):
            expect(a.name_iid in arg_names, f"argument name iid {a.name_iid} not interned")
            return arg_names[a.name_iid]
        return a.name

    def args(e):
        return {arg_name(a): value(a) for a in e.debug_annotations}

    def root(uuid):
        while tracks[uuid].HasField("parent_uuid"):
            uuid = tracks[uuid].parent_uuid
        return uuid

    def track_name(uuid):
        d = tracks[uuid]
        return d.process.process_name if d.HasField("process") else d.name

    # One process track per node, named after it.
    procs = {u: d for u, d in tracks.items() if d.HasField("process")}
    node_names = [n["name"] for n in report["nodes"]]
    expect(sorted(d.process.process_name for d in procs.values()) == sorted(node_names),
           f"process tracks {sorted(d.process.process_name for d in procs.values())} != nodes {sorted(node_names)}")
    expect(len({d.process.pid for d in procs.values()}) == len(procs), "two process tracks share a pid")
    proc_of_node = {d.process.process_name: u for u, d in procs.items()}

    # Every timestamp in order per track (in file order); slices closed, properly nested.
    last = {}
    depth = collections.Counter()
    for k, t, e in events:
        expect(t >= last.get(e.track_uuid, 0),
               f"packet {k}: time {t} on track {track_name(e.track_uuid)!r} is before {last.get(e.track_uuid)}")
        last[e.track_uuid] = t
        if e.type == TE.TYPE_SLICE_BEGIN:
            depth[e.track_uuid] += 1
        elif e.type == TE.TYPE_SLICE_END:
            depth[e.track_uuid] -= 1
            expect(depth[e.track_uuid] >= 0, f"packet {k}: a slice ends that never began")
    expect(all(v == 0 for v in depth.values()), "a slice is never closed")

    # An instant per event, on a CPU track of its node, at its corrected time.
    by_id = {}
    for k, t, e in events:
        a = args(e)
        if e.type == TE.TYPE_INSTANT and "dir" in a:
            expect(a["id"] not in by_id, f"event {a['id']} written twice")
            by_id[a["id"]] = (t, e, a)
    expect(len(by_id) == len(report["events"]), f"{len(by_id)} event instants, the report has {len(report['events'])} events")
    for ev in report["events"]:
        t, e, a = by_id[ev["id"]]
        expect(root(e.track_uuid) == proc_of_node[ev["node"]], f"event {ev['id']} is not on {ev['node']}'s track")
        expect(tracks[e.track_uuid].name == f"cpu {ev['cpu']}", f"event {ev['id']} is not on its cpu's track")
        expect(t == ev["t_ns"], f"event {ev['id']} at {t}, the report says {ev['t_ns']}")
        expect(a["t_raw_ns"] == ev["t_raw_ns"], f"event {ev['id']}: raw time {a['t_raw_ns']} != {ev['t_raw_ns']}")
        expect(a["dir"] == ev["dir"] and a["len"] == ev["len"] and a.get("seq") == ev["seq"] and a["node"] == ev["node"],
               f"event {ev['id']}: dir/len/seq/node differ from the report")
        expect(name_of(e) == ev["label"], f"event {ev['id']} named {name_of(e)!r}, labelled {ev['label']!r}")
        expect(a.get("fields", {}) == ev["fields"], f"event {ev['id']}: fields {a.get('fields')} != {ev['fields']}")

    # One flow per matched message, from its send to its receive.
    starts, ends = {}, {}
    for t, e, a in by_id.values():
        for f in e.flow_ids:
            expect(a["dir"] == "send" and f not in starts, f"flow {f} starts twice or at a receive")
            starts[f] = a["id"]
        for f in e.terminating_flow_ids:
            expect(a["dir"] == "recv" and f not in ends, f"flow {f} ends twice or at a send")
            ends[f] = a["id"]
    expect(starts.keys() == ends.keys(), "a flow starts without ending, or ends without starting")
    flows = sorted((starts[f], ends[f]) for f in starts)
    messages = sorted((m["send"], m["recv"]) for m in report["messages"])
    expect(flows == messages, f"{len(flows)} flows, {len(messages)} matched messages, and they differ")

    def slices_on(pred):
        return [(t, e) for _, t, e in events if e.type == TE.TYPE_SLICE_BEGIN and pred(e.track_uuid)]

    anomalies = collections.defaultdict(list)
    for x in report["anomalies"]:
        anomalies[x["kind"]].append(x)

    # Lost messages: an instant each, on the sender's "lost" track, with its cause.
    lost = [(t, e) for _, t, e in events if e.type == TE.TYPE_INSTANT and tracks[e.track_uuid].name == "lost"]
    want = sorted([(x["events"][0], x["cause"]) for x in anomalies["network_loss"]] +
                  [(s, "closed_connection") for x in anomalies["closed_connection"] for s in x["events"]])
    got = sorted((args(e)["send"], args(e)["cause"]) for _, e in lost)
    expect(got == want, f"{len(got)} lost instants, the report has {len(want)} lost messages")
    sender = {ev["id"]: ev["node"] for ev in report["events"]}
    for _, e in lost:
        expect(root(e.track_uuid) == proc_of_node[sender[args(e)["send"]]], "a lost instant is not on its sender's track")

    # Recorder gaps and stalls, on their node's tracks, over their span.
    def spans(kind):
        return sorted((x["nodes"][0], x["span_ns"][0]) for x in anomalies[kind] if x["span_ns"])
    gaps = slices_on(lambda u: tracks[u].name == "recorder gaps")
    expect(sorted((track_name(root(e.track_uuid)), t) for t, e in gaps) == spans("recorder_loss"),
           f"{len(gaps)} recorder gap slices, the report has {len(spans('recorder_loss'))}")
    stalls = slices_on(lambda u: root(u) in procs and (u in procs or tracks[u].name == "stalled"))
    expect(sorted((track_name(root(e.track_uuid)), t) for t, e in stalls) == spans("stalled_node"),
           f"{len(stalls)} stall slices, the report has {len(spans('stalled_node'))}")

    # A partition: a slice per island.
    islands = slices_on(lambda u: tracks[root(u)].name == "partition")
    want = sorted((x["span_ns"][0], ", ".join(i)) for x in anomalies["partition"] for i in x["islands"])
    got = sorted((t, args(e)["nodes"]) for t, e in islands)
    expect(got == want, f"island slices {got} != the report's islands {want}")

    # A slice per finding, with its rank and text, over its span.
    found = slices_on(lambda u: tracks[root(u)].name == "findings")
    expect(len(found) == len(report["findings"]), f"{len(found)} finding slices, the report has {len(report['findings'])} findings")
    for t, e in found:
        a = args(e)
        f = report["findings"][a["rank"] - 1]
        expect(a["text"] == f["text"] and a["kind"] == f["kind"], f"finding {a['rank']}'s slice says {a['text']!r}")
        if f["span_ns"]:
            expect(t == f["span_ns"][0], f"finding {a['rank']}'s slice starts at {t}, its span at {f['span_ns'][0]}")

    print(f"check.py: {len(packets)} packets, {len(procs)} node tracks, {len(by_id)} events, {len(flows)} flows = "
          f"{len(messages)} messages, {len(lost)} lost, {len(gaps)} recorder gaps, {len(stalls)} stalls, "
          f"{len(islands)} islands, {len(found)} findings: ok")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        fail("usage: check.py TRACE.pftrace REPORT.json")
    main(sys.argv[1], sys.argv[2])

//! Runs the detectors, each in its own module, in the order their evidence needs: the
//! recorder's gaps first (no loss is claimed where it was blind), then losses and the
//! kernels' drops, resends, stalls, partitions (which leave stalled nodes' losses to the
//! stalls) and lossy links (which leave the partitions' and stalls' losses to them).

use super::anomalies::{Anomaly, Context, Facts, Kind, NodeList, Receipts};
use super::kernel_drops::{self, DropIndex};
use super::partitions::{self, PARTITION_WINDOW_NS};
use super::trace::{EventId, NodeId};
use super::{losses, lossy, retries, stalls};

pub fn find(ctx: &Context<'_>) -> Vec<Anomaly> {
    let trace = ctx.trace;
    let mut out = Vec::new();
    let gaps = losses::recorder_gaps(trace, ctx.clocks);
    losses::recorder_losses(ctx, &gaps, &mut out);
    let drops = DropIndex::new(trace);
    let found = losses::find(ctx, &gaps, &drops, &mut out);
    if !trace.drops.is_empty() {
        kernel_drops::unexplained(ctx, &drops, &found.explained, &mut out);
    }
    drop(drops);
    for &(s, r, cause) in &found.lost {
        let e = &trace.events[s as usize];
        let mut a = Anomaly::new(Kind::NetworkLoss, vec![s]);
        a.nodes = NodeList::from_slice(&[e.node, r]);
        let t = ctx.corr(s);
        a.span = Some((t, t));
        a.cause = Some(cause);
        let refused = cause.reason.and_then(|k| trace.drop_reasons.get(k as usize)).is_some_and(|r| r == "no_socket");
        if refused && kernel_drops::startup_refusal(trace, ctx.clocks, r, e.proto, e.dport, t) {
            a.detail_mut().startup = true;
        }
        out.push(a);
    }
    retries::find(ctx, &mut out);
    let end_of = |n: NodeId| ctx.clocks.corrected(n, trace.nodes[n as usize].window.1);
    // Sends the receiver's kernel refused with a reset (its socket was gone: a crash), as
    // (send, receiver); a peer's orderly close (FIN) says nothing of the kind.
    let refused: Vec<(EventId, NodeId)> = out
        .iter()
        .filter(|a| a.kind == Kind::ClosedConnection && a.nodes.len() == 2 && matches!(a.facts(), Facts::Closed { how: "RST" }))
        .flat_map(|a| a.events.iter().map(move |&s| (s, a.nodes[1])))
        .collect();
    let stalls = stalls::stalls(trace, &found.lost, &refused, &|id| ctx.corr(id), &end_of);
    stalls::to_anomalies(&stalls, &mut out);
    let receipts = Receipts::new(ctx);
    let parts = partitions::find(ctx, &found.lost, &stalls, &receipts);
    // A partition is known to a window or two: losses across it just outside are its own too.
    let explained = |from: NodeId, to: NodeId, at: i64| {
        let island = |isl: &Vec<Vec<NodeId>>, n: NodeId| isl.iter().position(|x| x.contains(&n));
        parts.iter().any(|p| {
            p.span.is_some_and(|(a, b)| a - 2 * PARTITION_WINDOW_NS <= at && at <= b + 2 * PARTITION_WINDOW_NS)
                && island(&p.islands, from) != island(&p.islands, to)
        }) || stalls.iter().any(|st| st.from <= at && at <= st.to && (st.node == from || st.node == to))
    };
    out.extend(lossy::find(ctx, &found.lost, &explained, &receipts.node));
    out.extend(parts);
    for name in ctx.missing_nodes {
        out.push(Anomaly::with_facts(Kind::MissingNode, Vec::new(), Facts::MissingNode { name: name.clone() }));
    }
    out
}

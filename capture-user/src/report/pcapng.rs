//! The merged pcapng: every node's packets in global order, one interface per node,
//! timestamps corrected to the reference clock, labels and anomalies as comments.

use std::fmt::Write as _;
use std::io::Write;

use crate::analysis::Analysis;
use capture_ebpf::Direction;

use crate::analysis::trace::{Dir, Event};
use crate::dump::pcapng::{self, Options, Writer};
use crate::dump::{WGO_PEN, direction_flags};

/// Writes every node's packets in global order, with corrected times and comments.
pub fn write_merged<W: Write>(a: &Analysis, out: W) -> std::io::Result<()> {
    let t = &a.trace;
    let mut shb = Options::new();
    shb.str(pcapng::SHB_USERAPPL, concat!("wgo ", env!("CARGO_PKG_VERSION"))).str(
        pcapng::OPT_COMMENT,
        &format!("wgo merged report of {} nodes; times corrected to {}'s clock", t.nodes.len(), t.nodes[a.clocks.reference as usize].name),
    );
    let mut w = Writer::new(std::io::BufWriter::with_capacity(1 << 20, out), &shb)?;
    for (i, n) in t.nodes.iter().enumerate() {
        let c = &a.clocks.nodes[i];
        let mut idb = Options::new();
        idb.str(pcapng::IF_NAME, &n.name)
            .str(
                pcapng::IF_DESCRIPTION,
                &format!(
                    "{}: clock offset {} ns ± {} ({:?})",
                    n.name,
                    c.offset_ns,
                    c.uncertainty_ns.map_or("unknown".into(), |u| u.to_string()),
                    c.quality
                ),
            )
            .bytes(pcapng::IF_TSRESOL, &[9]);
        w.interface(pcapng::LINKTYPE_RAW, 65535, &idb)?;
    }
    let marks = a.event_anomalies();
    for &id in &a.order.order {
        let i = id as usize;
        let e: &Event = &t.events[i];
        let mut comment = a.label(i);
        if let Some(kinds) = marks.get(&id) {
            for k in kinds {
                comment.push_str(" [");
                comment.push_str(k.name());
                comment.push(']');
            }
        }
        let _ = write!(comment, " (raw {} ns)", e.t_raw);
        w.packet(e.node as u32, a.order.t_ns[i].max(0) as u64, e.orig_len, t.data(e), |o| {
            o.u32(pcapng::EPB_FLAGS, direction_flags(if e.dir == Dir::Send { Direction::Egress } else { Direction::Ingress }))
                .u32(pcapng::EPB_QUEUE, e.cpu as u32)
                .str(pcapng::OPT_COMMENT, &comment)
                // Unlike a dump's (the kernel time), the node's own clock: the timestamp is corrected.
                .custom(WGO_PEN, &e.t_raw.to_le_bytes());
            if e.seq != u64::MAX {
                o.u64(pcapng::EPB_PACKETID, e.seq);
            }
        })?;
    }
    w.into_inner().flush()
}

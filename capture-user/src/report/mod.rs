//! What `wgo report` writes from an [`Analysis`](crate::analysis::Analysis): the JSON
//! report ([`json`]), the merged pcapng ([`pcapng`]), the Perfetto trace ([`perfetto`]), the Parquet tables ([`parquet`]), the browser timeline ([`html`],
//! template in `templates/`) and the summary for people ([`text`]). It may use
//! `analysis`, `dump` (for the pcapng codec and flags) and `outfile`; nothing uses it
//! but the command line.

pub mod html;
pub mod json;
pub mod parquet;
pub mod pcapng;
pub mod perfetto;
pub mod text;

/// Each of the trace's addresses as the outputs print it: IPv6 in brackets, so that
/// `addr:port` reads unambiguously.
pub(crate) fn addr_texts(trace: &crate::analysis::trace::Trace) -> Vec<String> {
    trace
        .addrs
        .iter()
        .map(|a| match a {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        })
        .collect()
}

/// Analyzes and writes any of the JSON report, the Perfetto trace and the Parquet tables'
/// events while the order places them, each on a thread of its own fed the same batches;
/// then their tails. The tables' other files are the caller's ([`parquet::TablesDir::finish`]).
pub fn analyze_to(
    trace: crate::analysis::trace::Trace,
    inputs: crate::analysis::Inputs,
    json: Option<&mut (dyn std::io::Write + Send)>,
    perfetto: Option<&mut (dyn std::io::Write + Send)>,
    tables: Option<&parquet::TablesDir>,
) -> std::io::Result<(crate::analysis::Analysis, Option<parquet::EventsWritten>)> {
    use std::io::Write;

    use crate::analysis::order::Placed;
    let jw = json.map(|w| std::io::BufWriter::with_capacity(64 << 10, w));
    let pw = perfetto.map(|w| std::io::BufWriter::with_capacity(64 << 10, w));
    if jw.is_none() && pw.is_none() && tables.is_none() {
        return Ok((crate::analysis::analyze(trace, inputs), None));
    }
    let (a, written) = crate::analysis::analyze_streaming(
        trace,
        inputs,
        Some(move |s: crate::analysis::Streamed<'_>| {
            let crate::analysis::Streamed { trace, spec, classes, clocks, matching, batches } = s;
            std::thread::scope(|scope| {
                let mut senders = Vec::new();
                let mut channel = || {
                    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Placed>>(4);
                    senders.push(tx);
                    rx
                };
                let js = jw.map(|mut w| {
                    let rx = channel();
                    scope.spawn(move || {
                        let json = json::EventJson::new(trace, spec, classes);
                        json.write_head(&mut w, clocks)?;
                        json.write_events_from(w, rx)
                    })
                });
                let pf = pw.map(|mut w| {
                    let rx = channel();
                    scope.spawn(move || {
                        let mut p = perfetto::PerfettoWriter::new(trace, spec, classes, clocks);
                        p.write_head(&mut w, matching)?;
                        let w = p.write_events_from(w, rx)?;
                        Ok::<_, std::io::Error>((w, p.node_tracks, p.next_uuid))
                    })
                });
                let tb = tables.map(|dir| {
                    let rx = channel();
                    scope.spawn(move || parquet::EventTables::new(dir, trace, spec, classes, clocks, matching).write_from(rx))
                });
                // A writer that failed stopped reading: its error is reported when joined.
                for b in batches {
                    if let Some((last, rest)) = senders.split_last() {
                        for tx in rest {
                            let _ = tx.send(b.clone());
                        }
                        let _ = last.send(b);
                    }
                }
                drop(senders);
                (
                    js.map(|h| h.join().expect("the JSON stream panicked")),
                    pf.map(|h| h.join().expect("the Perfetto stream panicked")),
                    tb.map(|h| h.join().expect("the Parquet stream panicked")),
                )
            })
        }),
    );
    let mut phase = crate::analysis::Phase::new();
    let (jw, pw, tb) = written.expect("a stream was given");
    if let Some(jw) = jw {
        let mut jw = jw?;
        json::write_json_tail(&a, &mut jw)?;
        jw.flush()?;
        phase.done("rest of the JSON");
    }
    if let Some(pw) = pw {
        let (mut pw, node_tracks, next_uuid) = pw?;
        let mut p = perfetto::PerfettoWriter::new(&a.trace, &a.spec, &a.classes, &a.clocks);
        p.node_tracks = node_tracks;
        p.next_uuid = next_uuid;
        p.write_tail(&a, &mut pw)?;
        pw.flush()?;
        phase.done("rest of the Perfetto trace");
    }
    let events = tb.transpose()?;
    Ok((a, events))
}

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

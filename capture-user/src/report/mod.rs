//! What `wgo report` writes from an [`Analysis`](crate::analysis::Analysis): the JSON
//! report ([`json`]), the merged pcapng ([`pcapng`]), the Perfetto trace ([`perfetto`]), the browser timeline ([`html`],
//! template in `templates/`) and the summary for people ([`text`]). It may use
//! `analysis`, `dump` (for the pcapng codec and flags) and `outfile`; nothing uses it
//! but the command line.

pub mod html;
pub mod json;
pub mod pcapng;
pub mod perfetto;
pub mod text;

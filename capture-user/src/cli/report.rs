//! `wgo report`: merge dumps, analyze them, write the outputs and print the summary.

use std::path::PathBuf;

use anyhow::Context;

use super::peak_rss_kib;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Dump files (one node each), or a directory of them (with manifest.json if a trigger made it).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Protocol spec (TOML) naming the application's messages, rules and invariants.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Write the full report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write all packets, merged in global order with corrected times, as pcapng.
    #[arg(long)]
    pub pcapng: Option<PathBuf>,
    /// Write a Perfetto trace (ui.perfetto.dev): a track per node, flows from sends to receives, findings.
    #[arg(long)]
    pub perfetto: Option<PathBuf>,
    /// Write the report as Parquet tables (events, messages, anomalies, violations, findings, clock_pairs, nodes) into this directory.
    #[arg(long, value_name = "DIR")]
    pub parquet: Option<PathBuf>,
    /// Write the browser timeline (one self-contained HTML file).
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Open the timeline in the user's browser (or print its path when there is none).
    #[arg(long, requires = "html")]
    pub open: bool,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    use wgo::analysis::{self, trace::Trace};
    use wgo::outfile::write_atomically;
    use wgo::report;
    // Large per-event arrays come and go between phases: give each its own mapping, so
    // that freeing one returns its memory instead of leaving it in the heap.
    // SAFETY: mallopt only tunes the allocator; called before the big allocations.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for input in &args.inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("reading {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pcapng"))
                .collect();
            found.sort();
            if found.is_empty() {
                anyhow::bail!("{} holds no .pcapng dumps", input.display());
            }
            // A node is named as the collector verified it (its manifest's name for the
            // file), not as the dump calls itself.
            let manifest = wgo::transport::manifest::Manifest::load(input)?.unwrap_or_default();
            let verified = |f: &PathBuf| {
                let file = f.file_name()?.to_str()?;
                manifest.nodes.iter().find(|n| n.file.as_deref() == Some(file)).map(|n| n.name.clone())
            };
            files.extend(found.into_iter().map(|f| {
                let name = verified(&f);
                (f, name)
            }));
            missing.extend(manifest.missing.iter().cloned());
        } else if input.exists() {
            files.push((input.clone(), None));
        } else {
            anyhow::bail!("{} does not exist", input.display());
        }
    }
    let spec = match &args.spec {
        Some(p) => Some(analysis::spec::Spec::load(p)?),
        None => None,
    };
    let mut phase = analysis::Phase::new();
    let trace = Trace::read_files_as(&files)?;
    phase.done("read");
    let inputs = analysis::Inputs { spec, missing_nodes: missing };
    // Refused before the analysis, not after it: a DIR that is a file, or not ours.
    let tables = args.parquet.as_deref().map(report::parquet::TablesDir::create).transpose()?;
    // With --json, --perfetto or --parquet, the events are written while the analysis orders them.
    let (a, events) = with_output(args.json.as_deref(), |jw| {
        with_output(args.perfetto.as_deref(), |pw| report::analyze_to(trace, inputs, jw, pw, tables.as_ref()))
    })?;
    if let (Some(dir), Some(events)) = (tables, events) {
        dir.finish(&a, events)?;
    }
    let mut phase = analysis::Phase::new();
    if let Some(p) = &args.pcapng {
        write_atomically(p, |f| report::pcapng::write_merged(&a, f))?;
    }
    if let Some(p) = &args.html {
        let title = args.inputs.iter().map(|i| i.display().to_string()).collect::<Vec<_>>().join(" ");
        write_atomically(p, |f| report::html::write_html(&a, f, &title))?;
        phase.done("html");
    }
    let mut text = report::text::summary(&a);
    phase.done("summary");
    tracing::info!("peak memory {} KiB", analysis::peak_resident_kib().max(peak_rss_kib() as u64));
    for (flag, p) in
        [("json", &args.json), ("perfetto", &args.perfetto), ("pcapng", &args.pcapng), ("parquet", &args.parquet), ("timeline", &args.html)]
    {
        if let Some(p) = p {
            text.push_str(&format!("{flag}: {}\n", p.display()));
        }
    }
    // A reader that stopped early (`| head`) wanted no more: that is no error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        r => r.context("writing the summary to standard output")?,
    }
    if args.open
        && let Some(p) = &args.html
    {
        open_in_browser(p);
    }
    Ok(())
}

/// Runs `f` with the output at `path` (written atomically), or with none.
fn with_output<R>(
    path: Option<&std::path::Path>,
    f: impl FnOnce(Option<&mut (dyn std::io::Write + Send)>) -> std::io::Result<R>,
) -> std::io::Result<R> {
    let Some(path) = path else { return f(None) };
    let mut done = None;
    wgo::outfile::write_atomically(path, |w| {
        done = Some(f(Some(w))?);
        Ok(())
    })
    .map_err(std::io::Error::other)?;
    Ok(done.expect("written"))
}

/// Opens a file in the user's browser: $BROWSER (left running), then xdg-open (which
/// returns once it handed the file over, failing when it found no browser).
fn open_in_browser(path: &std::path::Path) {
    use std::process::{Command, Stdio};
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if let Ok(b) = std::env::var("BROWSER")
        && Command::new(&b).arg(&path).stdout(Stdio::null()).stderr(Stdio::null()).spawn().is_ok()
    {
        println!("opened {} with {b}", path.display());
        return;
    }
    let ok = Command::new("xdg-open").arg(&path).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if ok {
        println!("opened {} in your browser", path.display());
    } else {
        println!("no browser found; open {} yourself", path.display());
    }
}

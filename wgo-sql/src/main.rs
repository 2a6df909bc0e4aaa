//! `wgo-sql DIR 'SELECT …'` (also run as `wgo sql`, which execs this binary): one query over
//! the Parquet tables of `wgo report --parquet DIR`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use wgo_sql::{Format, Limits};

#[derive(Parser)]
#[command(
    name = "wgo sql",
    about = "SQL over an incident's Parquet tables (`wgo report INCIDENT --parquet DIR`), with Apache DataFusion",
    after_help = "Every table of DIR is registered under its directory's name, its Hive partitions \
                  (`key=value` directories) as columns. `SELECT * FROM information_schema.columns` lists the columns."
)]
struct Cli {
    /// The directory `wgo report --parquet` wrote.
    dir: PathBuf,
    /// One SQL statement (DataFusion's dialect, close to PostgreSQL's).
    query: String,
    /// How rows are written: an aligned table, CSV with a header, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    format: FormatArg,
    /// Memory the query may use (joins, sorts and aggregates spill to disk beyond it), e.g. 4GiB.
    #[arg(long, default_value = "4GiB", value_parser = wgo_sql::parse_bytes)]
    memory_limit: usize,
    /// Where spill files go (default: the OS's temporary directory).
    #[arg(long)]
    spill_dir: Option<PathBuf>,
    /// Threads (and plan partitions); default: one per CPU.
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Table,
    Csv,
    Json,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // A reader that stopped reading (`| head`) is not an error.
        if format!("{e:#}").contains("Broken pipe") {
            return;
        }
        eprintln!("wgo sql: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let limits = Limits { memory: cli.memory_limit, spill_dir: cli.spill_dir, partitions: cli.threads };
    let format = match cli.format {
        FormatArg::Table => Format::Table,
        FormatArg::Csv => Format::Csv,
        FormatArg::Json => Format::Json,
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = cli.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.enable_all().build().context("starting the query runtime")?;
    rt.block_on(async {
        let ctx = wgo_sql::session(&limits)?;
        wgo_sql::register_dir(&ctx, &cli.dir).await?;
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        wgo_sql::run(&ctx, &cli.query, format, &mut out).await?;
        Ok(())
    })
}

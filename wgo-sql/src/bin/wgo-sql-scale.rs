//! `wgo-sql-scale`: the measurements of `docs/scale.md`, one stage per process so that each
//! peak memory is its own (`cargo xtask bench scale` drives it).
//!
//! - `synth --events N --out DIR`: synthetic raw events (see `wgo_sql::scale`), truth as JSON;
//! - `stage match|losses|bounds --dir DIR`: one stage under `--memory-limit`; prints
//!   `{"seconds", "peak_rss_kib", "spilled_bytes", "rows", "result"}` as one JSON line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use datafusion::physical_plan::{ExecutionPlan, collect};
use wgo_sql::scale;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Synth {
        #[arg(long)]
        events: u64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    Stage {
        #[arg(value_enum)]
        which: Stage,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "4GiB", value_parser = wgo_sql::parse_bytes)]
        memory_limit: usize,
        /// Where spill files go (default: the OS's temporary directory).
        #[arg(long)]
        spill_dir: Option<PathBuf>,
        /// Plan a sort-merge join instead of a hash join (it spills; a hash join's build side must fit).
        #[arg(long)]
        sort_merge: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Stage {
    Match,
    Losses,
    Bounds,
}

fn peak_rss_kib() -> i64 {
    // SAFETY: getrusage writes into the struct we pass and has no other preconditions.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u.ru_maxrss
    }
}

fn spilled(plan: &Arc<dyn ExecutionPlan>) -> usize {
    plan.metrics().and_then(|m| m.spilled_bytes()).unwrap_or(0) + plan.children().iter().map(|c| spilled(c)).sum::<usize>()
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Synth { events, out, seed } => {
            let cfg = scale::Config { events, seed, ..scale::Config::default() };
            let t = std::time::Instant::now();
            let truth = scale::synth(&cfg, &out).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "{{\"events\": {}, \"matched\": {}, \"network_lost\": {}, \"recorder_lost\": {}, \"seconds\": {:.2}}}",
                truth.events,
                truth.matched,
                truth.network_lost,
                truth.recorder_lost,
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Cmd::Stage { which, dir, memory_limit, spill_dir, sort_merge } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let limits = wgo_sql::Limits { memory: memory_limit, spill_dir, partitions: None };
                let ctx = wgo_sql::session(&limits)?;
                if sort_merge {
                    ctx.sql("SET datafusion.optimizer.prefer_hash_join = false").await?.collect().await?;
                }
                scale::register(&ctx, &dir).await?;
                let stage = match which {
                    Stage::Match => scale::Stage::Match,
                    Stage::Losses => scale::Stage::Losses,
                    Stage::Bounds => scale::Stage::Bounds,
                };
                let sql = scale::stage_sql(stage, &dir)?;
                let t = std::time::Instant::now();
                let df = ctx.sql(&sql).await.map_err(|e| wgo_sql::readable(&ctx, e))?;
                let plan = df.create_physical_plan().await?;
                let batches = collect(plan.clone(), ctx.task_ctx()).await.context("running the stage")?;
                let seconds = t.elapsed().as_secs_f64();
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                let mut json = Vec::new();
                {
                    let mut w = datafusion::arrow::json::ArrayWriter::new(&mut json);
                    for b in &batches {
                        w.write(b)?;
                    }
                    w.finish()?;
                }
                let result = if json.is_empty() { "[]".into() } else { String::from_utf8(json)? };
                println!(
                    "{{\"seconds\": {seconds:.3}, \"peak_rss_kib\": {}, \"spilled_bytes\": {}, \"rows\": {rows}, \"result\": {result}}}",
                    peak_rss_kib(),
                    spilled(&plan)
                );
                anyhow::Ok(())
            })
        }
    }
}

//! The scale stages on a small synthetic incident, checked against its truth; and a query
//! over its memory limit that spills and still answers.

use std::path::Path;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::prelude::SessionContext;
use wgo_sql::scale::{self, Config, Stage};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn ctx(dir: &Path, memory: usize) -> SessionContext {
    let ctx = wgo_sql::session(&wgo_sql::Limits { memory, spill_dir: None, partitions: Some(2) }).unwrap();
    scale::register(&ctx, dir).await.unwrap();
    ctx
}

async fn stage(dir: &Path, s: Stage) -> Vec<RecordBatch> {
    let ctx = ctx(dir, 256 << 20).await;
    let sql = scale::stage_sql(s, dir).unwrap();
    ctx.sql(&sql).await.unwrap_or_else(|e| panic!("{}", wgo_sql::readable(&ctx, e))).collect().await.unwrap()
}

fn col_i64(b: &RecordBatch, name: &str) -> Vec<i64> {
    let c = datafusion::arrow::compute::cast(b.column_by_name(name).unwrap(), &datafusion::arrow::datatypes::DataType::Int64).unwrap();
    c.as_primitive::<Int64Type>().values().to_vec()
}

#[test]
fn stages_find_what_was_made() {
    let dir = std::env::temp_dir().join(format!("wgo-sql-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = Config { events: 200_000, duration_ns: 2_000_000_000, gap_ns: 30_000_000, loss: 0.02, ..Config::default() };
    let truth = scale::synth(&cfg, &dir).unwrap();
    assert!(truth.recorder_lost > 0 && truth.network_lost > 0, "{truth:?}");
    rt().block_on(async {
        // Matching: one row per message whose two ends were recorded.
        let written = stage(&dir, Stage::Match).await;
        let count: u64 = written.iter().flat_map(|b| col_i64(b, "count")).map(|n| n as u64).sum();
        assert_eq!(count, truth.matched);

        // Losses: every unmatched send, split by cause; the gaps' margin may take a few
        // network losses for the recorder's, never the other way.
        let losses = stage(&dir, Stage::Losses).await;
        let (mut network, mut recorder) = (0, 0);
        for b in &losses {
            let cause = b.column_by_name("cause").unwrap();
            let cause = datafusion::arrow::compute::cast(cause, &datafusion::arrow::datatypes::DataType::Utf8).unwrap();
            let lost = col_i64(b, "lost");
            for (i, n) in lost.iter().enumerate() {
                match cause.as_string::<i32>().value(i) {
                    "network" => network += *n as u64,
                    _ => recorder += *n as u64,
                }
            }
        }
        assert_eq!(network + recorder, truth.network_lost + truth.recorder_lost);
        assert!(recorder >= truth.recorder_lost, "recorder {recorder} < {}", truth.recorder_lost);
        assert!(recorder - truth.recorder_lost <= truth.network_lost / 20 + 2, "{recorder} vs {truth:?}");

        // Bounds: each ordered pair's hull lies on or under all its points, and the true
        // offset (receiver's clock minus sender's) is below every point.
        let bounds = stage(&dir, Stage::Bounds).await;
        let mut pairs = 0;
        for b in &bounds {
            let (send, recv) = (b.column_by_name("send_node").unwrap(), b.column_by_name("recv_node").unwrap());
            let send = datafusion::arrow::compute::cast(send, &datafusion::arrow::datatypes::DataType::Utf8).unwrap();
            let recv = datafusion::arrow::compute::cast(recv, &datafusion::arrow::datatypes::DataType::Utf8).unwrap();
            let upper = col_i64(b, "upper_ns");
            let hulls = b.column_by_name("hull").unwrap().as_list::<i32>();
            for (i, &upper) in upper.iter().enumerate() {
                let k = |s: &str| s.trim_start_matches("node").parse::<usize>().unwrap();
                let (a, r) = (k(send.as_string::<i32>().value(i)), k(recv.as_string::<i32>().value(i)));
                let h = hulls.value(i);
                let h = h.as_primitive::<Int64Type>().values().to_vec();
                assert!(h.len() >= 2 && h.len() % 2 == 0);
                // The lowest hull vertex is the drift-free bound.
                let lowest = h.chunks(2).map(|p| p[1]).min().unwrap();
                assert_eq!(lowest, upper);
                // At each vertex (x = send time on the sender's clock) the true offset is
                // below the delay by at least the network's smallest delay.
                for p in h.chunks(2) {
                    let t = p[0] as f64; // ≈ true time: offsets are ms, drifts ppm
                    let off = |n: usize| truth.clocks[n].0 as f64 + truth.clocks[n].1 * t;
                    let true_offset = off(r) - off(a);
                    assert!(true_offset + scale::MIN_DELAY_NS as f64 - 1e5 <= p[1] as f64, "pair {a}->{r}: {p:?} vs {true_offset}");
                }
                pairs += 1;
            }
        }
        assert_eq!(pairs, cfg.nodes * (cfg.nodes - 1));
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sort_over_the_memory_limit_spills_and_still_answers() {
    let dir = std::env::temp_dir().join(format!("wgo-sql-spill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = Config { events: 300_000, ..Config::default() };
    let truth = scale::synth(&cfg, &dir).unwrap();
    rt().block_on(async {
        let sql = "SELECT key, t_raw_ns FROM raw ORDER BY key";
        let small = ctx(&dir, 12 << 20).await;
        // The merge's own reservation must fit under the limit, or the sort cannot start.
        small.sql("SET datafusion.execution.sort_spill_reservation_bytes = 1048576").await.unwrap().collect().await.unwrap();
        let df = small.sql(sql).await.unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        let batches = datafusion::physical_plan::collect(plan.clone(), small.task_ctx()).await.unwrap();
        fn spilled(p: &std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> usize {
            p.metrics().and_then(|m| m.spilled_bytes()).unwrap_or(0) + p.children().iter().map(|c| spilled(c)).sum::<usize>()
        }
        assert!(spilled(&plan) > 0, "the sort did not spill");
        let keys: Vec<i64> = batches.iter().flat_map(|b| col_i64(b, "key")).collect();
        assert_eq!(keys.len() as u64, truth.events);
        assert!(keys.windows(2).all(|w| w[0] <= w[1]));
    });
    let _ = std::fs::remove_dir_all(&dir);
}

//! The report's relational stages on raw events, through DataFusion: the numbers of
//! `docs/scale.md` (`cargo xtask bench scale` runs them).
//!
//! - [`synth`] writes synthetic raw events as the recorders hold them before any matching
//!   (a `raw` table, Hive-partitioned by node, and the recorders' `gaps`), with known truth;
//! - [`MATCH`], [`LOSSES`], [`BOUNDS`] are the stages: the matching join on the message key,
//!   the losses as its unmatched side checked against the receivers' gaps, and the per-pair
//!   clock bounds as a convex-hull aggregate ([`lower_hull`]) whose partial results merge.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int32Array, Int64Array, ListArray, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Accumulator, AggregateUDF, Volatility, create_udaf};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

/// A synthetic incident: `nodes` nodes exchanging messages for `duration_ns`, each message a
/// send and (unless lost) a receive; clocks offset and drifting; each node's recorder blind
/// `gaps_per_node` times for `gap_ns`.
#[derive(Clone, Debug)]
pub struct Config {
    pub events: u64,
    pub nodes: usize,
    pub duration_ns: i64,
    /// Fraction of messages the network loses.
    pub loss: f64,
    pub gaps_per_node: usize,
    pub gap_ns: i64,
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config { events: 1_000_000, nodes: 5, duration_ns: 10_000_000_000, loss: 0.01, gaps_per_node: 3, gap_ns: 20_000_000, seed: 1 }
    }
}

/// What really happened, to check the stages against.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Truth {
    pub events: u64,
    /// Messages whose send and receive were both recorded.
    pub matched: u64,
    /// Sends lost in the network.
    pub network_lost: u64,
    /// Sends whose receive fell into the receiver's recorder gap.
    pub recorder_lost: u64,
    /// Node k's clock minus true time at true time 0, and its drift (ns per ns).
    pub clocks: Vec<(i64, f64)>,
}

/// Smallest and largest one-way delay of the synthetic network.
pub const MIN_DELAY_NS: i64 = 50_000;
pub const MAX_DELAY_NS: i64 = 2_000_000;
/// How far a send's time (sender's clock) may be from its receiver's gap (receiver's
/// clock) and still be one of its losses: clock offsets plus the longest delay.
pub const GAP_MARGIN_NS: i64 = 10_000_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64: fast, and good enough for synthetic traffic.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

/// The raw table's schema: a recorder's event before matching. `key` stands for what
/// matching compares (flow, payload bytes and occurrence); `node` is the partition.
pub fn raw_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("dir", DataType::Utf8, false),
        Field::new("cpu", DataType::Int32, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("t_raw_ns", DataType::Int64, false),
        Field::new("src", DataType::Utf8, false),
        Field::new("dst", DataType::Utf8, false),
        Field::new("len", DataType::Int32, false),
        Field::new("key", DataType::Int64, false),
    ]))
}

#[derive(Default)]
struct Columns {
    dir: Vec<&'static str>,
    cpu: Vec<i32>,
    seq: Vec<i64>,
    t: Vec<i64>,
    src: Vec<u16>,
    dst: Vec<u16>,
    len: Vec<i32>,
    key: Vec<i64>,
}

impl Columns {
    fn batch(&mut self) -> RecordBatch {
        let c = std::mem::take(self);
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(c.dir)),
            Arc::new(Int32Array::from(c.cpu)),
            Arc::new(Int64Array::from(c.seq)),
            Arc::new(Int64Array::from(c.t)),
            Arc::new(c.src.iter().map(|&k| Some(node_name(k as usize))).collect::<StringArray>()),
            Arc::new(c.dst.iter().map(|&k| Some(node_name(k as usize))).collect::<StringArray>()),
            Arc::new(Int32Array::from(c.len)),
            Arc::new(Int64Array::from(c.key)),
        ];
        RecordBatch::try_new(raw_schema(), cols).expect("columns match the schema")
    }
}

/// Node k's name, as in its partition directory `node=nodeK`.
pub fn node_name(k: usize) -> String {
    format!("node{k}")
}

const ROWS_PER_GROUP: usize = 1 << 20;

/// Writes `dir/raw/node=K/part-0.parquet` (zstd) and `dir/gaps/gaps.parquet`, and returns
/// the truth. Memory stays at one row group per node whatever the size.
pub fn synth(cfg: &Config, dir: &Path) -> Result<Truth, Box<dyn std::error::Error + Send + Sync>> {
    let n = cfg.nodes.max(2);
    let mut rng = Rng(cfg.seed);
    let clocks: Vec<(i64, f64)> = (0..n).map(|k| ((k as i64 - 2) * 1_300_000 + 200_000, (k as f64 - 2.0) * 10e-6)).collect();
    let clock = |k: usize, t: i64| t + clocks[k].0 + (t as f64 * clocks[k].1) as i64;
    // Gaps, in true time, spread so that no two of a node's are within 2 margins.
    let slot = cfg.duration_ns / (cfg.gaps_per_node as i64 + 1);
    let gaps: Vec<Vec<(i64, i64)>> = (0..n)
        .map(|k| {
            (0..cfg.gaps_per_node)
                .map(|g| (slot * (g as i64 + 1) + k as i64 * 7_000_000, slot * (g as i64 + 1) + k as i64 * 7_000_000 + cfg.gap_ns))
                .collect()
        })
        .collect();
    let in_gap = |k: usize, t: i64| gaps[k].iter().any(|&(a, b)| t >= a && t < b);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_row_count(Some(ROWS_PER_GROUP))
        .build();
    let mut writers = Vec::new();
    for k in 0..n {
        let d = dir.join("raw").join(format!("node={}", node_name(k)));
        std::fs::create_dir_all(&d)?;
        let f = std::fs::File::create(d.join("part-0.parquet"))?;
        writers.push(ArrowWriter::try_new(f, raw_schema(), Some(props.clone()))?);
    }
    let mut cols: Vec<Columns> = (0..n).map(|_| Columns::default()).collect();
    // Per node and CPU: the next sequence number (gaps skip some: those records were lost).
    let mut seq = vec![[0i64; 2]; n];
    let mut truth = Truth { clocks: clocks.clone(), ..Truth::default() };
    let messages = (cfg.events / 2).max(1) as i64;
    let record = |cols: &mut Vec<Columns>,
                  k: usize,
                  dir: &'static str,
                  t: i64,
                  src: usize,
                  dst: usize,
                  len: i32,
                  key: i64,
                  seq: &mut Vec<[i64; 2]>,
                  rng: &mut Rng| {
        let cpu = rng.below(2) as usize;
        let blind = in_gap(k, t);
        seq[k][cpu] += 1;
        if blind {
            return false;
        }
        let c = &mut cols[k];
        c.dir.push(dir);
        c.cpu.push(cpu as i32);
        c.seq.push(seq[k][cpu]);
        c.t.push(clock(k, t));
        c.src.push(src as u16);
        c.dst.push(dst as u16);
        c.len.push(len);
        c.key.push(key);
        true
    };
    for i in 0..messages {
        let t = (i as i128 * cfg.duration_ns as i128 / messages as i128) as i64;
        let a = rng.below(n as u64) as usize;
        let b = (a + 1 + rng.below(n as u64 - 1) as usize) % n;
        let len = 64 + rng.below(136) as i32;
        let key = Rng(cfg.seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)).next() as i64;
        let sent = record(&mut cols, a, "send", t, a, b, len, key, &mut seq, &mut rng);
        let delay = MIN_DELAY_NS + rng.below((MAX_DELAY_NS - MIN_DELAY_NS) as u64) as i64;
        if rng.chance(cfg.loss) {
            if sent {
                truth.network_lost += 1;
            }
        } else {
            let got = record(&mut cols, b, "recv", t + delay, a, b, len, key, &mut seq, &mut rng);
            match (sent, got) {
                (true, true) => truth.matched += 1,
                (true, false) => truth.recorder_lost += 1,
                _ => {}
            }
            truth.events += u64::from(got);
        }
        truth.events += u64::from(sent);
        for k in [a, b] {
            if cols[k].t.len() >= ROWS_PER_GROUP {
                writers[k].write(&cols[k].batch())?;
            }
        }
    }
    for (w, c) in writers.iter_mut().zip(cols.iter_mut()) {
        if !c.t.is_empty() {
            w.write(&c.batch())?;
        }
    }
    for w in writers {
        w.close()?;
    }
    // The recorders' gaps, on each node's own clock.
    let schema = Arc::new(Schema::new(vec![
        Field::new("node", DataType::Utf8, false),
        Field::new("from_ns", DataType::Int64, false),
        Field::new("to_ns", DataType::Int64, false),
    ]));
    let (mut node, mut from, mut to) = (Vec::new(), Vec::new(), Vec::new());
    for (k, gs) in gaps.iter().enumerate() {
        for &(a, b) in gs {
            node.push(node_name(k));
            from.push(clock(k, a));
            to.push(clock(k, b));
        }
    }
    let gaps_batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(node)), Arc::new(Int64Array::from(from)), Arc::new(Int64Array::from(to))],
    )?;
    std::fs::create_dir_all(dir.join("gaps"))?;
    let mut w = ArrowWriter::try_new(std::fs::File::create(dir.join("gaps/gaps.parquet"))?, schema, Some(props))?;
    w.write(&gaps_batch)?;
    w.close()?;
    Ok(truth)
}

/// The matching join: every send joined to the receive of the same message key, written
/// out as the `messages` table the later stages read (a stage boundary, as in a
/// distributed plan). `{out}` is the directory it is written to.
pub const MATCH: &str = "COPY (
  SELECT s.node AS send_node, s.t_raw_ns AS send_ns, r.node AS recv_node, r.t_raw_ns AS recv_ns
  FROM raw s JOIN raw r ON s.key = r.key
  WHERE s.dir = 'send' AND r.dir = 'recv'
) TO '{out}' STORED AS PARQUET";

/// The losses: sends with no receive (an anti-join on the key), each a recorder loss when
/// its receiver's recorder was blind around then (a gap within the margin), else a network
/// loss; counted per link and cause.
pub const LOSSES: &str = "WITH lost AS (
  SELECT s.node AS sender, s.dst AS receiver, s.t_raw_ns
  FROM raw s LEFT ANTI JOIN (SELECT key FROM raw WHERE dir = 'recv') r ON s.key = r.key
  WHERE s.dir = 'send'
)
SELECT l.sender, l.receiver,
       CASE WHEN g.node IS NULL THEN 'network' ELSE 'recorder' END AS cause,
       count(*) AS lost
FROM lost l LEFT JOIN gaps g
  ON g.node = l.receiver AND l.t_raw_ns BETWEEN g.from_ns - {margin} AND g.to_ns + {margin}
GROUP BY l.sender, l.receiver, cause
ORDER BY l.sender, l.receiver, cause";

/// The per-pair clock bounds: for each ordered pair, the messages' (send time, receive time
/// minus send time) points; the receiver's clock minus the sender's is below every such
/// point's delay, so the lower convex hull of the points is all the evidence there is (a
/// drifting offset is a line under it). `upper_ns` is the drift-free bound.
pub const BOUNDS: &str = "SELECT send_node, recv_node, count(*) AS messages,
       min(recv_ns - send_ns) AS upper_ns,
       lower_hull(send_ns, recv_ns - send_ns) AS hull
FROM messages
GROUP BY send_node, recv_node
ORDER BY send_node, recv_node";

/// One of the stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Match,
    Losses,
    Bounds,
}

/// The stage's SQL for the tables under `dir` (MATCH writes `dir/messages/`, which it
/// empties first).
pub fn stage_sql(stage: Stage, dir: &Path) -> std::io::Result<String> {
    Ok(match stage {
        Stage::Match => {
            let out = dir.join("messages");
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out)?;
            MATCH.replace("{out}", &format!("{}/", out.display()))
        }
        Stage::Losses => LOSSES.replace("{margin}", &GAP_MARGIN_NS.to_string()),
        Stage::Bounds => BOUNDS.to_string(),
    })
}

/// The lower convex hull of points sorted by x (one point per x, the lowest): the
/// monotone chain's lower half.
pub fn hull(points: &mut Vec<(i64, i64)>) {
    points.sort_unstable();
    points.dedup_by_key(|p| p.0);
    let mut h: Vec<(i64, i64)> = Vec::with_capacity(points.len().min(64));
    for &p in points.iter() {
        while h.len() >= 2 {
            let (o, a) = (h[h.len() - 2], h[h.len() - 1]);
            let cross = (a.0 - o.0) as i128 * (p.1 - o.1) as i128 - (a.1 - o.1) as i128 * (p.0 - o.0) as i128;
            if cross > 0 {
                break;
            }
            h.pop();
        }
        h.push(p);
    }
    *points = h;
}

/// `lower_hull(x, y)`: the lower convex hull of the points, as a list `[x0, y0, x1, y1, …]`
/// in x order. Its partial state is a hull too: the hull of the union of hulls is the hull of
/// the union, so partitions (or machines) aggregate apart and merge.
pub fn lower_hull() -> AggregateUDF {
    let list = DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)));
    create_udaf(
        "lower_hull",
        vec![DataType::Int64, DataType::Int64],
        Arc::new(list.clone()),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(HullAcc::default()))),
        Arc::new(vec![list]),
    )
}

#[derive(Debug, Default)]
struct HullAcc {
    points: Vec<(i64, i64)>,
    /// Points added since the last hull: the hull is taken again once they pile up.
    pending: usize,
}

impl HullAcc {
    fn add(&mut self, x: &Int64Array, y: &Int64Array) {
        for i in 0..x.len() {
            if x.is_valid(i) && y.is_valid(i) {
                self.points.push((x.value(i), y.value(i)));
            }
        }
        self.pending += x.len();
        if self.pending > 4096 {
            hull(&mut self.points);
            self.pending = 0;
        }
    }

    fn flat(&mut self) -> ScalarValue {
        hull(&mut self.points);
        self.pending = 0;
        let flat: Vec<Option<i64>> = self.points.iter().flat_map(|&(x, y)| [Some(x), Some(y)]).collect();
        ScalarValue::List(Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>([Some(flat)])))
    }
}

impl Accumulator for HullAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.add(values[0].as_primitive::<Int64Type>(), values[1].as_primitive::<Int64Type>());
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let lists = states[0].as_list::<i32>();
        for i in 0..lists.len() {
            if lists.is_null(i) {
                continue;
            }
            let v = lists.value(i);
            let v = v.as_primitive::<Int64Type>();
            for j in (0..v.len().saturating_sub(1)).step_by(2) {
                self.points.push((v.value(j), v.value(j + 1)));
            }
            self.pending += v.len() / 2;
        }
        if self.pending > 4096 {
            hull(&mut self.points);
            self.pending = 0;
        }
        Ok(())
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![self.flat()])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(self.flat())
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.points.capacity() * 16
    }
}

/// Registers `dir`'s `raw`, `gaps` and (once written) `messages` tables and `lower_hull`.
pub async fn register(ctx: &datafusion::prelude::SessionContext, dir: &Path) -> Result<(), crate::Error> {
    ctx.register_udaf(lower_hull());
    crate::register_dir(ctx, dir).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hull_keeps_the_lower_chain() {
        let mut p = vec![(3, 5), (0, 0), (1, 3), (2, 1), (4, 0), (2, 7), (1, -1)];
        hull(&mut p);
        assert_eq!(p, vec![(0, 0), (1, -1), (4, 0)]);
        // Collinear middle points go; a repeated x keeps its lowest y.
        let mut q = vec![(0, 0), (1, 1), (2, 2), (2, 1)];
        hull(&mut q);
        assert_eq!(q, vec![(0, 0), (2, 1)]);
    }

    #[test]
    fn merged_hulls_are_the_hull_of_the_union() {
        let mut rng = Rng(7);
        let all: Vec<(i64, i64)> = (0..2000).map(|_| (rng.below(10_000) as i64, rng.below(10_000) as i64)).collect();
        let mut whole = all.clone();
        hull(&mut whole);
        let mut merged = Vec::new();
        for part in all.chunks(300) {
            let mut h = part.to_vec();
            hull(&mut h);
            merged.extend(h);
        }
        hull(&mut merged);
        assert_eq!(merged, whole);
    }
}

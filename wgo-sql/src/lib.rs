//! `wgo sql`: SQL over the Parquet tables that `wgo report --parquet DIR` writes, with
//! Apache DataFusion embedded. Its own crate, so that DataFusion stays out of `wgo`'s build.
//!
//! - [`session`]: a DataFusion session under a memory limit, spilling to disk beyond it;
//! - [`register_dir`]: every table of the directory, its Hive partitions as columns;
//! - [`run`]: one query, its rows written as an aligned table, CSV or JSON;
//! - [`readable`]: DataFusion's errors, saying which table or column does not exist;
//! - [`scale`]: synthetic raw events and the report's relational stages, for `docs/scale.md`.

pub mod scale;

use std::collections::BTreeMap;
use std::io::Write;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use futures::StreamExt;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Query(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}: no Parquet tables here (write them with `wgo report INCIDENT --parquet DIR`)")]
    NoTables(PathBuf),
    #[error("table {table}: {problem}")]
    Layout { table: String, problem: String },
    #[error("writing the rows: {0}")]
    Output(String),
    #[error("{0}")]
    Engine(#[from] DataFusionError),
}

/// How a session may use memory and disk.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes the query's operators may hold; joins, sorts and aggregates spill beyond it.
    pub memory: usize,
    /// Where spill files go (the OS's temporary directory if None).
    pub spill_dir: Option<PathBuf>,
    /// Threads and partitions of the plan (the CPU count if None).
    pub partitions: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory: 4 << 30, spill_dir: None, partitions: None }
    }
}

/// Parses `4GiB`, `512MiB`, `2G`, `100M`, `64k` or a number of bytes.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a size (e.g. 4GiB, 512MiB, 1000000)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("`{s}`: unknown unit `{u}` (use B, KiB, MiB, GiB or TiB)")),
    };
    let bytes = n * mult;
    if !bytes.is_finite() || bytes < 1.0 || bytes > usize::MAX as f64 {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(bytes as usize)
}

/// A session whose operators share `limits.memory` fairly and spill to disk beyond it.
/// `information_schema` is on, so `SELECT * FROM information_schema.columns` lists every column.
pub fn session(limits: &Limits) -> Result<SessionContext, Error> {
    let disk = DiskManagerBuilder::default().with_mode(match &limits.spill_dir {
        Some(d) => DiskManagerMode::Directories(vec![d.clone()]),
        None => DiskManagerMode::OsTmpDirectory,
    });
    // The tracking pool names the biggest consumers when a query runs out of memory.
    let pool = TrackConsumersPool::new(FairSpillPool::new(limits.memory), NonZeroUsize::new(5).expect("5 > 0"));
    let runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::new(pool)).with_disk_manager_builder(disk).build_arc()?;
    let mut config = SessionConfig::new().with_information_schema(true);
    if let Some(p) = limits.partitions {
        config = config.with_target_partitions(p.max(1));
    }
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

/// One table of the directory: its name, its root, and its Hive partition columns in
/// directory order (text).
#[derive(Debug, PartialEq)]
pub struct Table {
    pub name: String,
    pub path: PathBuf,
    pub partitions: Vec<(String, DataType)>,
}

/// The tables under `dir`: each subdirectory holding `.parquet` files (at any depth below
/// `key=value` directories) is one table, named after it; so is a `NAME.parquet` file.
pub fn find_tables(dir: &Path) -> Result<Vec<Table>, Error> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut tables = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir).map_err(io(dir))?.collect::<Result<_, _>>().map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let kind = e.file_type().map_err(io(&path))?;
        if kind.is_file() && name.ends_with(".parquet") {
            let name = name.trim_end_matches(".parquet").to_string();
            tables.push(Table { name, path, partitions: Vec::new() });
        } else if kind.is_dir() {
            let mut levels: Vec<String> = Vec::new();
            let mut depths = std::collections::BTreeSet::new();
            walk(&path, 0, &mut levels, &mut depths, &name)?;
            if depths.is_empty() {
                continue;
            }
            if depths.len() > 1 || depths.first() != Some(&levels.len()) {
                let problem = format!("its Parquet files are not all {} `key=value` directories deep", levels.len());
                return Err(Error::Layout { table: name, problem });
            }
            // Text, as `wgo report --parquet` documents its partitions (a node named `7` too).
            let partitions = levels.into_iter().map(|key| (key, DataType::Utf8)).collect();
            tables.push(Table { name, path, partitions });
        }
    }
    if tables.is_empty() {
        return Err(Error::NoTables(dir.to_path_buf()));
    }
    Ok(tables)
}

/// Collects the `key=value` levels below a table's root and the depths of its Parquet
/// files; a table partitioned by different keys at one depth is refused.
fn walk(
    dir: &Path,
    depth: usize,
    levels: &mut Vec<String>,
    depths: &mut std::collections::BTreeSet<usize>,
    table: &str,
) -> Result<(), Error> {
    let layout = |problem: String| Error::Layout { table: table.to_string(), problem };
    let read = std::fs::read_dir(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    for e in read {
        let e = e.map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let path = e.path();
        if path.is_dir() {
            let Some((key, _)) = name.split_once('=') else {
                return Err(layout(format!("{} is not a `key=value` partition directory", path.display())));
            };
            // Levels are pushed one depth at a time, so `depth <= levels.len()` here.
            match levels.get(depth) {
                Some(k) if k == key => {}
                Some(k) => return Err(layout(format!("{} is partitioned by `{k}` elsewhere at that depth", path.display()))),
                None => levels.push(key.to_string()),
            }
            walk(&path, depth + 1, levels, depths, table)?;
        } else if name.ends_with(".parquet") {
            depths.insert(depth);
        }
    }
    Ok(())
}

/// Registers every table under `dir` and returns them.
pub async fn register_dir(ctx: &SessionContext, dir: &Path) -> Result<Vec<Table>, Error> {
    let tables = find_tables(dir)?;
    for t in &tables {
        let path = t.path.to_str().ok_or_else(|| Error::Layout { table: t.name.clone(), problem: "its path is not UTF-8".into() })?;
        // A directory's URL ends with a slash, or DataFusion reads it as one file.
        let url = if t.path.is_dir() { format!("{}/", path.trim_end_matches('/')) } else { path.to_string() };
        let options = ParquetReadOptions::default().table_partition_cols(t.partitions.clone());
        ctx.register_parquet(t.name.as_str(), &url, options)
            .await
            .map_err(|e| Error::Layout { table: t.name.clone(), problem: e.to_string() })?;
    }
    Ok(tables)
}

/// How rows are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns with a header (all rows are held to size the columns).
    Table,
    /// CSV with a header, streamed.
    Csv,
    /// One JSON object per line (NDJSON), streamed.
    Json,
}

/// Plans and runs `sql`, writing its rows to `out`; returns the number of rows.
pub async fn run(ctx: &SessionContext, sql: &str, format: Format, out: &mut dyn Write) -> Result<u64, Error> {
    let df = ctx.sql(sql).await.map_err(|e| readable(ctx, e))?;
    let mut stream = df.execute_stream().await.map_err(|e| readable(ctx, e))?;
    let mut rows = 0u64;
    let out_err = |e: &dyn std::fmt::Display| Error::Output(e.to_string());
    match format {
        Format::Table => {
            let mut batches: Vec<RecordBatch> = Vec::new();
            let schema = stream.schema();
            while let Some(b) = stream.next().await {
                let b = b.map_err(|e| readable(ctx, e))?;
                rows += b.num_rows() as u64;
                batches.push(b);
            }
            if batches.is_empty() {
                batches.push(RecordBatch::new_empty(schema));
            }
            let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches).map_err(|e| out_err(&e))?;
            writeln!(out, "{text}").map_err(|e| out_err(&e))?;
            writeln!(out, "{rows} row{}", if rows == 1 { "" } else { "s" }).map_err(|e| out_err(&e))?;
        }
        Format::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut *out);
            let mut any = false;
            while let Some(b) = stream.next().await {
                let b = b.map_err(|e| readable(ctx, e))?;
                rows += b.num_rows() as u64;
                w.write(&b).map_err(|e| out_err(&e))?;
                any = true;
            }
            if !any {
                // The header alone, for a query that returned nothing.
                w.write(&RecordBatch::new_empty(stream.schema())).map_err(|e| out_err(&e))?;
            }
        }
        Format::Json => {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut *out);
            while let Some(b) = stream.next().await {
                let b = b.map_err(|e| readable(ctx, e))?;
                rows += b.num_rows() as u64;
                w.write(&b).map_err(|e| out_err(&e))?;
            }
            w.finish().map_err(|e| out_err(&e))?;
        }
    }
    out.flush().map_err(|e| out_err(&e))?;
    Ok(rows)
}

/// The tables of the session's default schema and their columns, sorted.
pub fn catalog(ctx: &SessionContext) -> BTreeMap<String, Vec<String>> {
    let mut tables = BTreeMap::new();
    let Some(schema) = ctx.catalog("datafusion").and_then(|c| c.schema("public")) else { return tables };
    for name in schema.table_names() {
        // Listing tables answer without I/O: their schema was inferred at registration.
        let cols = match futures::FutureExt::now_or_never(schema.table(&name)) {
            Some(Ok(Some(t))) => t.schema().fields().iter().map(|f| f.name().clone()).collect(),
            _ => Vec::new(),
        };
        tables.insert(name, cols);
    }
    tables
}

/// DataFusion's error, said plainly: a missing table names the tables there are, a missing
/// column names the columns of the tables in the query; anything else is DataFusion's own
/// message without its wrapping.
pub fn readable(ctx: &SessionContext, e: DataFusionError) -> Error {
    use datafusion::common::SchemaError;
    let root = e.find_root();
    let tables = catalog(ctx);
    let list = |v: &mut dyn Iterator<Item = &String>| v.map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    if let DataFusionError::SchemaError(se, _) = root
        && let SchemaError::FieldNotFound { field, valid_fields } = se.as_ref()
    {
        let mut msg = format!("no column `{}`", field.flat_name());
        let mut by_table: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for c in valid_fields {
            let t = c.relation.as_ref().map_or_else(String::new, |r| r.table().to_string());
            by_table.entry(t).or_default().push(c.name.clone());
        }
        if let Some(close) = closest(&field.name, valid_fields.iter().map(|c| &c.name)) {
            msg += &format!(" (did you mean `{close}`?)");
        }
        for (t, cols) in &by_table {
            let t = if t.is_empty() { "the query's input".to_string() } else { format!("`{t}`") };
            msg += &format!("; {t} has: {}", list(&mut cols.iter()));
        }
        return Error::Query(msg);
    }
    if let DataFusionError::Plan(m) = root
        && let Some(name) = m.strip_prefix("table '").and_then(|r| r.strip_suffix("' not found"))
    {
        let short = name.rsplit('.').next().unwrap_or(name);
        let mut msg = format!("no table `{short}`");
        if let Some(close) = closest(short, tables.keys()) {
            msg += &format!(" (did you mean `{close}`?)");
        }
        msg += &format!("; the tables are: {}", list(&mut tables.keys()));
        return Error::Query(msg);
    }
    Error::Query(root.to_string())
}

/// The candidate nearest to `name` by edit distance, if it is near (at most a third of it).
fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    let best = candidates.map(|c| (edit_distance(&name.to_lowercase(), &c.to_lowercase()), c)).min_by_key(|(d, _)| *d)?;
    (best.0 > 0 && best.0 <= name.len().div_ceil(3)).then_some(best.1)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for j in 0..b.len() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != b[j])).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5k"), Ok(1536));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("4 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("0").is_err());
    }

    #[test]
    fn nearest_names() {
        let names: Vec<String> = ["events", "messages", "anomalies"].map(String::from).into();
        assert_eq!(closest("event", names.iter()), Some(&names[0]));
        assert_eq!(closest("messgaes", names.iter()), Some(&names[1]));
        assert_eq!(closest("clock", names.iter()), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}

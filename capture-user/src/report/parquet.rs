//! The Parquet tables (`wgo report --parquet DIR`): the one owner of their format, their
//! versioned Arrow schemas and the directory's layout (documented in the README column by
//! column), and their writer.
//!
//! ```text
//! DIR/_wgo_tables.json                     {"schema_version": 1, "tables": [...]}
//! DIR/events/node=NAME/part-00000.parquet  Hive-partitioned by node; each file in global order
//! DIR/messages/part-00000.parquet          and one directory per other table
//! ```
//!
//! Events are written while the order places them (as the JSON is), grouped per node, in
//! row groups of at most [`ROW_GROUP_ROWS`] rows: each row group covers a short time, so its
//! `t_ns` statistics let a query on a time range skip the rest. The other tables are small
//! beside the events and are written after the analysis, in batches of [`BATCH_ROWS`].
//! Everything goes into `DIR.partial/` (0700, files 0600), renamed into place when complete.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, MapBuilder, StringBuilder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::analysis::anomalies::Kind;
use crate::analysis::clocks::Clocks;
use crate::analysis::matching::{Matching, TimeMap};
use crate::analysis::order::{NO_GROUP, Placed};
use crate::analysis::rules::UNKNOWN;
use crate::analysis::spec::{Spec, Value};
use crate::analysis::trace::{Dir, Trace};
use crate::analysis::{Analysis, Phase, push_label};

/// The tables' schema version: raised whenever a column changes meaning or type, or goes.
pub const SCHEMA_VERSION: u32 = 1;
/// The key of every file's Parquet metadata that holds [`SCHEMA_VERSION`].
pub const VERSION_KEY: &str = "wgo.schema_version";
/// The directory's manifest (a leading `_`: readers of Hive layouts skip it).
pub const MANIFEST: &str = "_wgo_tables.json";
/// Every table, each a directory of `DIR`.
pub const TABLES: [&str; 7] = ["events", "messages", "anomalies", "violations", "findings", "clock_pairs", "nodes"];
/// The events' Hive partition column: `events/node=NAME/` (NAME percent-encoded, see
/// [`partition_value`]); it is in the path, not in the files.
pub const EVENTS_PARTITION: &str = "node";
/// Rows per row group at most (a few MiB of events compressed).
pub const ROW_GROUP_ROWS: usize = 64 * 1024;
/// Rows per file of a node's events before the next part begins.
pub const FILE_ROWS: usize = 1 << 20;
/// Rows of the other tables per record batch.
pub const BATCH_ROWS: usize = 64 * 1024;
/// Events (16 bytes each: id, time, group) buffered for all nodes together before they are
/// written: past it, the node with the most is written as a row group. Their columns are
/// made only then, [`SLICE_ROWS`] at a time, so the writer holds little beside the report.
const BUFFERED_EVENTS: usize = 256 * 1024;
/// Rows whose columns are made at once.
const SLICE_ROWS: usize = 8 * 1024;
/// Event files open at once (a file descriptor each): past it, the least recently written
/// is finished, and the node's next events begin a new part.
const OPEN_FILES: usize = 128;

fn str_list() -> DataType {
    DataType::new_list(DataType::Utf8, true)
}

fn u32_list() -> DataType {
    DataType::new_list(DataType::UInt32, true)
}

/// Directed links: `[{src, dst}]`, node names.
fn links_type() -> DataType {
    let link = Fields::from(vec![Field::new("src", DataType::Utf8, false), Field::new("dst", DataType::Utf8, false)]);
    DataType::new_list(DataType::Struct(link), true)
}

/// Decoded fields: name → value (an integer in decimal, or its label).
fn fields_type() -> DataType {
    let entry = Fields::from(vec![Field::new("keys", DataType::Utf8, false), Field::new("values", DataType::Utf8, true)]);
    DataType::Map(Arc::new(Field::new("entries", DataType::Struct(entry), false)), false)
}

fn schema(fields: Vec<Field>) -> SchemaRef {
    let meta = [(VERSION_KEY.to_string(), SCHEMA_VERSION.to_string())].into_iter().collect();
    Arc::new(Schema::new_with_metadata(fields, meta))
}

/// `events`: one row per recorded packet (partition column `node` besides, from the path).
pub fn events_schema() -> SchemaRef {
    use DataType::*;
    schema(vec![
        Field::new("id", UInt32, false),
        Field::new("node_id", UInt16, false),
        Field::new("dir", Utf8, false),
        Field::new("t_raw_ns", Int64, false),
        Field::new("t_ns", Int64, false),
        Field::new("t_err_ns", Int64, true),
        Field::new("cpu", UInt16, false),
        Field::new("seq", UInt64, true),
        Field::new("proto", Utf8, false),
        Field::new("src", Utf8, false),
        Field::new("dst", Utf8, false),
        Field::new("sport", UInt16, true),
        Field::new("dport", UInt16, true),
        Field::new("len", UInt32, false),
        Field::new("caplen", UInt32, false),
        Field::new("label", Utf8, false),
        Field::new("msg_type", Utf8, true),
        Field::new("fields", fields_type(), false),
        Field::new("concurrent", UInt32, true),
        Field::new("msg_id", UInt32, true),
    ])
}

/// `messages`: one row per matched (send, receive) pair.
pub fn messages_schema() -> SchemaRef {
    use DataType::*;
    schema(vec![
        Field::new("msg_id", UInt32, false),
        Field::new("send", UInt32, false),
        Field::new("recv", UInt32, false),
        Field::new("kind", Utf8, false),
        Field::new("src_node", Utf8, false),
        Field::new("dst_node", Utf8, false),
        Field::new("send_t_ns", Int64, false),
        Field::new("recv_t_ns", Int64, false),
        Field::new("delay_ns", Int64, false),
    ])
}

/// `anomalies`: one row per anomaly, in the JSON's order.
pub fn anomalies_schema() -> SchemaRef {
    use DataType::*;
    schema(vec![
        Field::new("anomaly_id", UInt32, false),
        Field::new("kind", Utf8, false),
        Field::new("text", Utf8, false),
        Field::new("events", u32_list(), false),
        Field::new("nodes", str_list(), false),
        Field::new("islands", DataType::new_list(str_list(), true), false),
        Field::new("span_start_ns", Int64, true),
        Field::new("span_end_ns", Int64, true),
        Field::new("cause", Utf8, true),
        Field::new("reason", Utf8, true),
        Field::new("node", Utf8, true),
        Field::new("links", links_type(), false),
        Field::new("all_links_of", Utf8, true),
        Field::new("waiters", str_list(), false),
        Field::new("startup", Boolean, false),
        Field::new("step_at_ns", Int64, true),
        Field::new("step_at_raw_ns", Int64, true),
        Field::new("step_size_ns", Int64, true),
        Field::new("step_uncertainty_ns", Int64, true),
    ])
}

/// `violations`: one row per broken rule or invariant.
pub fn violations_schema() -> SchemaRef {
    use DataType::*;
    schema(vec![
        Field::new("violation_id", UInt32, false),
        Field::new("name", Utf8, false),
        Field::new("events", u32_list(), false),
        Field::new("text", Utf8, false),
    ])
}

/// `findings`: what went wrong, ranked.
pub fn findings_schema() -> SchemaRef {
    use DataType::*;
    schema(vec![
        Field::new("rank", UInt32, false),
        Field::new("kind", Utf8, false),
        Field::new("nodes", str_list(), false),
        Field::new("links", links_type(), false),
        Field::new("span_start_ns", Int64, true),
        Field::new("span_end_ns", Int64, true),
        Field::new("text", Utf8, false),
        Field::new("evidence", u32_list(), false),
        Field::new("islands", DataType::new_list(str_list(), true), false),
        Field::new("cause", Utf8, true),
        Field::new("reason", Utf8, true),
        Field::new("all_links_of", Utf8, true),
        Field::new("waiters", str_list(), false),
    ])
}

/// `clock_pairs`: per pair of nodes with evidence, as in the JSON.
pub fn clock_pairs_schema() -> SchemaRef {
    use DataType::*;
    schema(vec![
        Field::new("a", Utf8, false),
        Field::new("b", Utf8, false),
        Field::new("messages", UInt64, false),
        Field::new("both_directions", Boolean, false),
        Field::new("offset_ns", Int64, false),
        Field::new("drift_ppm", Float64, false),
        Field::new("uncertainty_ns", Int64, false),
        Field::new("inconsistent", Boolean, false),
        Field::new("dropped_bounds", UInt64, false),
        Field::new("dropped_trigger_bounds", UInt64, false),
    ])
}

/// `nodes`: one row per recorded node.
pub fn nodes_schema() -> SchemaRef {
    use DataType::*;
    schema(vec![
        Field::new("node_id", UInt16, false),
        Field::new("name", Utf8, false),
        Field::new("reference", Boolean, false),
        Field::new("offset_ns", Int64, false),
        Field::new("uncertainty_ns", Int64, true),
        Field::new("quality", Utf8, false),
        Field::new("drift_ppm", Float64, false),
        Field::new("events", UInt64, false),
        Field::new("file", Utf8, false),
        Field::new("skipped", str_list(), false),
        Field::new("kernel_drops", UInt64, false),
        Field::new("clock_steps", UInt32, false),
    ])
}

/// A table's schema by name (one of [`TABLES`]).
pub fn table_schema(table: &str) -> Option<SchemaRef> {
    Some(match table {
        "events" => events_schema(),
        "messages" => messages_schema(),
        "anomalies" => anomalies_schema(),
        "violations" => violations_schema(),
        "findings" => findings_schema(),
        "clock_pairs" => clock_pairs_schema(),
        "nodes" => nodes_schema(),
        _ => return None,
    })
}

/// A node's name as a Hive partition value: bytes outside `[A-Za-z0-9._-]` as `%XX`
/// (so `/`, `=` and `%` cannot break the path), and a leading `.` or `_` too (readers skip
/// such names as hidden).
pub fn partition_value(node: &str) -> String {
    let mut out = String::with_capacity(node.len());
    for (i, &b) in node.as_bytes().iter().enumerate() {
        let hidden = i == 0 && (b == b'.' || b == b'_');
        if (b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') && !hidden {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where a node's events of one part go, relative to `DIR`.
pub fn events_part_path(node: &str, part: u32) -> PathBuf {
    PathBuf::from(format!("events/{EVENTS_PARTITION}={}/part-{part:05}.parquet", partition_value(node)))
}

/// The one part of each table but the events, relative to `DIR`.
pub fn table_path(table: &str) -> PathBuf {
    PathBuf::from(format!("{table}/part-00000.parquet"))
}

#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    #[error("--parquet {path}: it exists and is not a directory; give a directory (it is made if missing)")]
    NotADirectory { path: PathBuf },
    #[error("--parquet {path}: it is a symlink; give the directory itself")]
    Symlink { path: PathBuf },
    #[error(
        "--parquet {path}: the directory holds files wgo did not write (no {MANIFEST}); refusing to replace it, give a new or empty directory"
    )]
    NotOurs { path: PathBuf },
    #[error("--parquet: {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("--parquet: writing {path}: {error}")]
    Parquet { path: PathBuf, error: parquet::errors::ParquetError },
    #[error("--parquet: {0}")]
    Output(#[from] crate::outfile::OutputError),
}

impl From<TablesError> for std::io::Error {
    fn from(e: TablesError) -> std::io::Error {
        std::io::Error::other(e)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TablesError + '_ {
    move |error| TablesError::Io { path: path.to_path_buf(), error }
}

/// Marks a directory being written (a crash's leftover with it may be removed).
const PARTIAL_MARK: &str = ".wgo-partial";

/// The tables' directory while it is written: `DIR.partial/`, renamed to `DIR` by
/// [`TablesDir::commit`], removed if dropped before.
pub struct TablesDir {
    dest: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

impl TablesDir {
    /// Checks `dest` (a directory wgo wrote, an empty one, or nothing yet) and makes the
    /// private directory the tables are written into.
    pub fn create(dest: &Path) -> Result<TablesDir, TablesError> {
        match std::fs::symlink_metadata(dest) {
            Ok(m) if m.file_type().is_symlink() => return Err(TablesError::Symlink { path: dest.to_path_buf() }),
            Ok(m) if !m.is_dir() => return Err(TablesError::NotADirectory { path: dest.to_path_buf() }),
            Ok(_) => {
                let mut entries = std::fs::read_dir(dest).map_err(io_err(dest))?;
                if entries.next().is_some() && !dest.join(MANIFEST).is_file() {
                    return Err(TablesError::NotOurs { path: dest.to_path_buf() });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(dest)(e)),
        }
        crate::outfile::check_dir(dest)?;
        let tmp = crate::outfile::partial_path(dest);
        match std::fs::symlink_metadata(&tmp) {
            Ok(m) if m.is_dir() => {
                if !tmp.join(PARTIAL_MARK).is_file() {
                    return Err(TablesError::NotOurs { path: tmp });
                }
                std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
            }
            // A file or a symlink at the name: removed, never followed.
            Ok(_) => std::fs::remove_file(&tmp).map_err(io_err(&tmp))?,
            Err(_) => {}
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&tmp).map_err(io_err(&tmp))?;
        }
        let dir = TablesDir { dest: dest.to_path_buf(), tmp, committed: false };
        dir.create_file(Path::new(PARTIAL_MARK))?;
        Ok(dir)
    }

    /// Where the tables are being written.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// A new file (0600) at `rel` under the partial directory, making its directories (0700).
    fn create_file(&self, rel: &Path) -> Result<File, TablesError> {
        let path = self.tmp.join(rel);
        if let Some(parent) = path.parent()
            && !parent.is_dir()
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(io_err(parent))?;
        }
        crate::outfile::create_new(&path, 0o600).map_err(io_err(&path))
    }

    fn writer(&self, table: &str, rel: &Path, schema: SchemaRef) -> Result<ArrowWriter<BufWriter<File>>, TablesError> {
        let f = self.create_file(rel)?;
        ArrowWriter::try_new(BufWriter::with_capacity(256 << 10, f), schema, Some(properties(table)))
            .map_err(|error| TablesError::Parquet { path: self.tmp.join(rel), error })
    }

    /// Writes the tables but the events (from the finished analysis) and the manifest,
    /// and renames the directory into place.
    pub fn finish(mut self, a: &Analysis, events: EventsWritten) -> Result<(), TablesError> {
        let mut phase = Phase::new();
        let mut files = events.files;
        let mut rows = vec![("events", events.rows)];
        for (table, n) in [
            ("messages", write_table(&self, "messages", messages_schema(), a.matching.messages.len(), |r| messages_batch(a, r))?),
            ("anomalies", write_table(&self, "anomalies", anomalies_schema(), a.anomalies.len(), |r| anomalies_batch(a, r))?),
            ("violations", write_table(&self, "violations", violations_schema(), a.violations.len(), |r| violations_batch(a, r))?),
            ("findings", write_table(&self, "findings", findings_schema(), a.findings.len(), |r| findings_batch(a, r))?),
            ("clock_pairs", write_table(&self, "clock_pairs", clock_pairs_schema(), a.clocks.pairs.len(), |r| clock_pairs_batch(a, r))?),
            ("nodes", write_table(&self, "nodes", nodes_schema(), a.trace.nodes.len(), |r| nodes_batch(a, r))?),
        ] {
            rows.push((table, n));
            files.push(table_path(table));
        }
        // No node had events: the table still exists, empty, so that queries find it.
        if events.rows == 0 {
            let rel = PathBuf::from("events/part-00000.parquet");
            let w = self.writer("events", &rel, events_schema())?;
            w.close().map_err(|error| TablesError::Parquet { path: self.tmp.join(&rel), error })?;
            files.push(rel);
        }
        let manifest = serde_json::json!({
            "schema_version": SCHEMA_VERSION,
            "events_partitioned_by": [EVENTS_PARTITION],
            "tables": rows.iter().map(|(t, n)| serde_json::json!({"name": t, "rows": n})).collect::<Vec<_>>(),
            "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        });
        let mpath = self.tmp.join(MANIFEST);
        let mut f = self.create_file(Path::new(MANIFEST))?;
        std::io::Write::write_all(&mut f, manifest.to_string().as_bytes()).map_err(io_err(&mpath))?;
        let mark = self.tmp.join(PARTIAL_MARK);
        std::fs::remove_file(&mark).map_err(io_err(&mark))?;
        self.commit()?;
        phase.done("Parquet tables");
        Ok(())
    }

    /// Puts the directory at its destination: exchanged with a previous one atomically
    /// (readers see the old tables or the new, never a mix), which is then removed.
    fn commit(&mut self) -> Result<(), TablesError> {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).expect("paths have no NUL");
        let (from, to) = (c(&self.tmp), c(&self.dest));
        let rename_err =
            |error| TablesError::Output(crate::outfile::OutputError::Rename { from: self.tmp.clone(), to: self.dest.clone(), error });
        if self.dest.exists() {
            // SAFETY: two valid NUL-terminated paths, relative to the working directory.
            let r = unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_EXCHANGE) };
            if r != 0 {
                return Err(rename_err(std::io::Error::last_os_error()));
            }
            self.committed = true;
            // The previous tables, now at the temporary name.
            std::fs::remove_dir_all(&self.tmp).map_err(io_err(&self.tmp))?;
        } else {
            std::fs::rename(&self.tmp, &self.dest).map_err(rename_err)?;
            self.committed = true;
        }
        let parent = self.dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let _ = crate::outfile::sync_dir(parent);
        Ok(())
    }
}

impl Drop for TablesDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// How a table's files are written: zstd, statistics per row group (they are small
/// enough that page statistics would add little), and the encodings that suit each column.
/// Dictionaries only where few distinct values repeat (building one for ids or times costs
/// more time than anything else in the writer, and is then thrown away); deltas for ids and
/// times, which mostly rise.
fn properties(table: &str) -> WriterProperties {
    use parquet::basic::Encoding;
    use parquet::file::properties::EnabledStatistics;
    use parquet::schema::types::ColumnPath;
    let (dictionary, delta): (&[&str], &[&str]) = match table {
        "events" => (
            &[
                "node_id",
                "dir",
                "t_err_ns",
                "cpu",
                "proto",
                "src",
                "dst",
                "sport",
                "dport",
                "len",
                "caplen",
                "msg_type",
                "fields.entries.keys",
            ],
            &["id", "t_raw_ns", "t_ns", "seq", "concurrent", "msg_id"],
        ),
        "messages" => (&["kind", "src_node", "dst_node"], &["msg_id", "send", "recv", "send_t_ns", "recv_t_ns"]),
        _ => (&[], &[]),
    };
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_key_value_metadata(Some(vec![KeyValue::new(VERSION_KEY.to_string(), SCHEMA_VERSION.to_string())]));
    if !dictionary.is_empty() || !delta.is_empty() {
        b = b.set_dictionary_enabled(false);
    }
    for c in dictionary {
        b = b.set_column_dictionary_enabled(ColumnPath::from(*c), true);
    }
    for c in delta {
        b = b.set_column_encoding(ColumnPath::from(*c), Encoding::DELTA_BINARY_PACKED);
    }
    // Free text no query prunes by: its minimum and maximum cost a comparison a value.
    if table == "events" {
        for c in ["label", "fields.entries.keys", "fields.entries.values"] {
            b = b.set_column_statistics_enabled(ColumnPath::from(c), EnabledStatistics::None);
        }
    }
    b.build()
}

/// Writes one table in batches of [`BATCH_ROWS`]; returns its rows.
fn write_table(
    dir: &TablesDir,
    table: &str,
    schema: SchemaRef,
    rows: usize,
    batch: impl Fn(std::ops::Range<usize>) -> Vec<ArrayRef>,
) -> Result<usize, TablesError> {
    let rel = table_path(table);
    let path = dir.tmp.join(&rel);
    let perr = |error| TablesError::Parquet { path: path.clone(), error };
    let mut w = dir.writer(table, &rel, schema.clone())?;
    let mut start = 0;
    while start < rows {
        let end = (start + BATCH_ROWS).min(rows);
        let b = RecordBatch::try_new(schema.clone(), batch(start..end)).map_err(|e| perr(e.into()))?;
        w.write(&b).map_err(perr)?;
        start = end;
    }
    w.close().map_err(perr)?;
    Ok(rows)
}

fn arc(a: impl arrow_array::Array + 'static) -> ArrayRef {
    Arc::new(a)
}

/// Appends one list of strings.
fn push_strs<'s>(b: &mut ListBuilder<StringBuilder>, items: impl IntoIterator<Item = &'s str>) {
    for s in items {
        b.values().append_value(s);
    }
    b.append(true);
}

fn push_u32s(b: &mut ListBuilder<UInt32Builder>, items: impl IntoIterator<Item = u32>) {
    for v in items {
        b.values().append_value(v);
    }
    b.append(true);
}

/// Lists of lists of strings (islands).
fn push_islands<'s>(b: &mut ListBuilder<ListBuilder<StringBuilder>>, islands: impl IntoIterator<Item = Vec<&'s str>>) {
    for island in islands {
        push_strs(b.values(), island);
    }
    b.append(true);
}

/// Lists of directed links as `{src, dst}` structs, from each row's pairs.
fn links_array<'s>(rows: impl Iterator<Item = Vec<[&'s str; 2]>>) -> ArrayRef {
    let (mut src, mut dst, mut lengths) = (StringBuilder::new(), StringBuilder::new(), Vec::new());
    for links in rows {
        lengths.push(links.len());
        for [s, d] in links {
            src.append_value(s);
            dst.append_value(d);
        }
    }
    let DataType::List(item) = links_type() else { unreachable!("links are a list") };
    let DataType::Struct(fields) = item.data_type().clone() else { unreachable!("of structs") };
    let values = StructArray::new(fields, vec![arc(src.finish()), arc(dst.finish())], None);
    arc(arrow_array::ListArray::new(item, arrow_buffer_offsets(&lengths), Arc::new(values), None))
}

fn arrow_buffer_offsets(lengths: &[usize]) -> arrow_buffer::OffsetBuffer<i32> {
    arrow_buffer::OffsetBuffer::from_lengths(lengths.iter().copied())
}

fn islands_builder() -> ListBuilder<ListBuilder<StringBuilder>> {
    ListBuilder::new(ListBuilder::new(StringBuilder::new()))
}

fn messages_batch(a: &Analysis, r: std::ops::Range<usize>) -> Vec<ArrayRef> {
    let t = &a.trace;
    let n = r.len();
    let (mut id, mut send, mut recv) = (UInt32Builder::with_capacity(n), UInt32Builder::with_capacity(n), UInt32Builder::with_capacity(n));
    let (mut kind, mut src, mut dst) = (StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let (mut st, mut rt, mut delay) = (Int64Builder::with_capacity(n), Int64Builder::with_capacity(n), Int64Builder::with_capacity(n));
    for k in r {
        let (s, rc) = a.matching.messages[k];
        let (es, er) = (&t.events[s as usize], &t.events[rc as usize]);
        id.append_value(k as u32);
        send.append_value(s);
        recv.append_value(rc);
        kind.append_value(match a.matching.kinds.get(k) {
            Some(crate::analysis::matching::MessageKind::Keyed) => "keyed",
            Some(crate::analysis::matching::MessageKind::KeyedByTime) => "keyed_by_time",
            Some(crate::analysis::matching::MessageKind::TcpRange) => "tcp_range",
            None => "keyed",
        });
        src.append_value(&t.nodes[es.node as usize].name);
        dst.append_value(&t.nodes[er.node as usize].name);
        st.append_value(a.order.t_ns[s as usize]);
        rt.append_value(a.order.t_ns[rc as usize]);
        delay.append_value(a.clocks.corrected(er.node, er.t_raw) - a.clocks.corrected(es.node, es.t_raw));
    }
    vec![
        arc(id.finish()),
        arc(send.finish()),
        arc(recv.finish()),
        arc(kind.finish()),
        arc(src.finish()),
        arc(dst.finish()),
        arc(st.finish()),
        arc(rt.finish()),
        arc(delay.finish()),
    ]
}

fn anomalies_batch(a: &Analysis, r: std::ops::Range<usize>) -> Vec<ArrayRef> {
    let t = &a.trace;
    let name = |n: &u16| t.nodes[*n as usize].name.as_str();
    // Clock steps are the anomalies' `clock_step`s, in the same order.
    let steps_before = a.anomalies[..r.start].iter().filter(|x| x.kind == Kind::ClockStep).count();
    let mut steps = a.clocks.steps.iter().skip(steps_before);
    let mut id = UInt32Builder::new();
    let (mut kind, mut text) = (StringBuilder::new(), StringBuilder::new());
    let mut events = ListBuilder::new(UInt32Builder::new());
    let mut nodes = ListBuilder::new(StringBuilder::new());
    let mut islands = islands_builder();
    let (mut s0, mut s1) = (Int64Builder::new(), Int64Builder::new());
    let (mut cause, mut reason, mut node, mut all_of) =
        (StringBuilder::new(), StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let mut links = Vec::new();
    let mut waiters = ListBuilder::new(StringBuilder::new());
    let mut startup = BooleanBuilder::new();
    let (mut at, mut at_raw, mut size, mut unc) = (Int64Builder::new(), Int64Builder::new(), Int64Builder::new(), Int64Builder::new());
    for k in r {
        let x = &a.anomalies[k];
        id.append_value(k as u32);
        kind.append_value(x.kind.name());
        text.append_value(a.anomaly_text(x));
        push_u32s(&mut events, x.events.iter().copied());
        push_strs(&mut nodes, x.nodes.iter().map(name));
        push_islands(&mut islands, x.islands.iter().map(|i| i.iter().map(name).collect()));
        s0.append_option(x.span.map(|s| s.0));
        s1.append_option(x.span.map(|s| s.1));
        cause.append_option(match x.kind {
            Kind::NetworkLoss | Kind::Partition | Kind::LossyLink => x.cause.map(|c| c.kind.name()),
            Kind::ClosedConnection => Some("closed_connection"),
            _ => None,
        });
        reason.append_option(x.cause.and_then(|c| c.reason).and_then(|r| t.drop_reasons.get(r as usize)));
        node.append_option((x.kind == Kind::KernelDrop).then(|| x.nodes.first().map(name)).flatten());
        links.push(x.detail.iter().flat_map(|d| d.links.iter().map(|(p, q)| [name(p), name(q)])).collect());
        all_of.append_option(x.detail.as_ref().and_then(|d| d.all_links_of.as_ref()).map(name));
        push_strs(&mut waiters, x.detail.iter().flat_map(|d| d.waiters.iter().map(name)));
        startup.append_value(x.detail.as_ref().is_some_and(|d| d.startup));
        let step = if x.kind == Kind::ClockStep { steps.next() } else { None };
        at.append_option(step.map(|s| a.clocks.corrected(s.node, s.at_raw)));
        at_raw.append_option(step.map(|s| s.at_raw));
        size.append_option(step.map(|s| s.size_ns));
        unc.append_option(step.and_then(|s| s.uncertainty_ns));
    }
    vec![
        arc(id.finish()),
        arc(kind.finish()),
        arc(text.finish()),
        arc(events.finish()),
        arc(nodes.finish()),
        arc(islands.finish()),
        arc(s0.finish()),
        arc(s1.finish()),
        arc(cause.finish()),
        arc(reason.finish()),
        arc(node.finish()),
        links_array(links.into_iter()),
        arc(all_of.finish()),
        arc(waiters.finish()),
        arc(startup.finish()),
        arc(at.finish()),
        arc(at_raw.finish()),
        arc(size.finish()),
        arc(unc.finish()),
    ]
}

fn violations_batch(a: &Analysis, r: std::ops::Range<usize>) -> Vec<ArrayRef> {
    let mut id = UInt32Builder::new();
    let (mut name, mut text) = (StringBuilder::new(), StringBuilder::new());
    let mut events = ListBuilder::new(UInt32Builder::new());
    for k in r {
        let v = &a.violations[k];
        id.append_value(k as u32);
        name.append_value(&v.name);
        push_u32s(&mut events, v.events.iter().copied());
        text.append_value(&v.text);
    }
    vec![arc(id.finish()), arc(name.finish()), arc(events.finish()), arc(text.finish())]
}

fn findings_batch(a: &Analysis, r: std::ops::Range<usize>) -> Vec<ArrayRef> {
    let t = &a.trace;
    let name = |n: &u16| t.nodes[*n as usize].name.as_str();
    let mut rank = UInt32Builder::new();
    let (mut kind, mut text) = (StringBuilder::new(), StringBuilder::new());
    let mut nodes = ListBuilder::new(StringBuilder::new());
    let mut links = Vec::new();
    let (mut s0, mut s1) = (Int64Builder::new(), Int64Builder::new());
    let mut evidence = ListBuilder::new(UInt32Builder::new());
    let mut islands = islands_builder();
    let (mut cause, mut reason, mut all_of) = (StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let mut waiters = ListBuilder::new(StringBuilder::new());
    for k in r {
        let f = &a.findings[k];
        rank.append_value(k as u32 + 1);
        kind.append_value(serde_name(&f.kind));
        push_strs(&mut nodes, f.nodes.iter().map(name));
        links.push(f.links.iter().map(|(p, q)| [name(p), name(q)]).collect());
        s0.append_option(f.span.map(|s| s.0));
        s1.append_option(f.span.map(|s| s.1));
        text.append_value(&f.text);
        push_u32s(&mut evidence, f.evidence.iter().copied());
        push_islands(&mut islands, f.islands.iter().map(|i| i.iter().map(name).collect()));
        cause.append_option(f.cause.map(|c| c.kind.name()));
        reason.append_option(f.cause.and_then(|c| c.reason).and_then(|r| t.drop_reasons.get(r as usize)));
        all_of.append_option(f.all_links_of.as_ref().map(name));
        push_strs(&mut waiters, f.waiters.iter().map(name));
    }
    vec![
        arc(rank.finish()),
        arc(kind.finish()),
        arc(nodes.finish()),
        links_array(links.into_iter()),
        arc(s0.finish()),
        arc(s1.finish()),
        arc(text.finish()),
        arc(evidence.finish()),
        arc(islands.finish()),
        arc(cause.finish()),
        arc(reason.finish()),
        arc(all_of.finish()),
        arc(waiters.finish()),
    ]
}

fn clock_pairs_batch(a: &Analysis, r: std::ops::Range<usize>) -> Vec<ArrayRef> {
    let t = &a.trace;
    let (mut pa, mut pb) = (StringBuilder::new(), StringBuilder::new());
    let (mut msgs, mut dropped, mut dropped_weak) = (UInt64Builder::new(), UInt64Builder::new(), UInt64Builder::new());
    let (mut both, mut inconsistent) = (BooleanBuilder::new(), BooleanBuilder::new());
    let (mut off, mut unc) = (Int64Builder::new(), Int64Builder::new());
    let mut drift = Float64Builder::new();
    for p in &a.clocks.pairs[r] {
        pa.append_value(&t.nodes[p.a as usize].name);
        pb.append_value(&t.nodes[p.b as usize].name);
        msgs.append_value(p.messages as u64);
        both.append_value(p.both_directions);
        off.append_value(p.theta.round() as i64);
        drift.append_value(ppm(p.drift));
        unc.append_value(p.uncertainty.ceil() as i64);
        inconsistent.append_value(p.inconsistent);
        dropped.append_value((p.dropped_strong + p.dropped_weak) as u64);
        dropped_weak.append_value(p.dropped_weak as u64);
    }
    vec![
        arc(pa.finish()),
        arc(pb.finish()),
        arc(msgs.finish()),
        arc(both.finish()),
        arc(off.finish()),
        arc(drift.finish()),
        arc(unc.finish()),
        arc(inconsistent.finish()),
        arc(dropped.finish()),
        arc(dropped_weak.finish()),
    ]
}

fn nodes_batch(a: &Analysis, r: std::ops::Range<usize>) -> Vec<ArrayRef> {
    let t = &a.trace;
    let mut id = UInt16Builder::new();
    let (mut name, mut quality, mut file) = (StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let mut reference = BooleanBuilder::new();
    let (mut off, mut unc) = (Int64Builder::new(), Int64Builder::new());
    let mut drift = Float64Builder::new();
    let (mut events, mut drops) = (UInt64Builder::new(), UInt64Builder::new());
    let mut skipped = ListBuilder::new(StringBuilder::new());
    let mut steps = UInt32Builder::new();
    for i in r {
        let (n, c) = (&t.nodes[i], &a.clocks.nodes[i]);
        id.append_value(i as u16);
        name.append_value(&n.name);
        reference.append_value(a.clocks.reference as usize == i);
        off.append_value(c.offset_ns);
        unc.append_option(c.uncertainty_ns);
        quality.append_value(serde_name(&c.quality));
        drift.append_value(ppm(c.drift));
        events.append_value(t.node_ranges[i].len() as u64);
        file.append_value(n.file.display().to_string());
        push_strs(&mut skipped, n.skipped.iter().map(String::as_str));
        drops.append_value(n.kernel_drops);
        steps.append_value(a.clocks.steps.iter().filter(|s| s.node as usize == i).count() as u32);
    }
    vec![
        arc(id.finish()),
        arc(name.finish()),
        arc(reference.finish()),
        arc(off.finish()),
        arc(unc.finish()),
        arc(quality.finish()),
        arc(drift.finish()),
        arc(events.finish()),
        arc(file.finish()),
        arc(skipped.finish()),
        arc(drops.finish()),
        arc(steps.finish()),
    ]
}

/// Drift as the JSON gives it: ppm, to three decimals.
fn ppm(drift: f64) -> f64 {
    (drift * 1e6 * 1000.0).round() / 1000.0
}

fn serde_name(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// How much the events' writer holds at once (the constants; smaller in tests).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub file_rows: usize,
    pub open_files: usize,
    pub buffered_events: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { file_rows: FILE_ROWS, open_files: OPEN_FILES, buffered_events: BUFFERED_EVENTS }
    }
}

/// What the events' writer left: how many rows, in which files.
pub struct EventsWritten {
    pub rows: usize,
    pub files: Vec<PathBuf>,
}

/// One node's open events file.
struct NodeFile {
    w: ArrowWriter<BufWriter<File>>,
    rel: PathBuf,
    rows: usize,
    last_used: u64,
}

/// Writes the events as the order places them: per node, into `events/node=NAME/`.
pub struct EventTables<'a> {
    dir: &'a TablesDir,
    trace: &'a Trace,
    spec: &'a Spec,
    classes: &'a [u16],
    clocks: &'a Clocks,
    matching: &'a Matching,
    /// Message indices sorted by their receive (messages are sorted by send).
    by_recv: Vec<u32>,
    addrs: Vec<String>,
    schema: SchemaRef,
    open: Vec<Option<NodeFile>>,
    /// Each node's events not yet written, and how many of them all nodes have.
    buffered: Vec<Vec<Placed>>,
    buffered_events: usize,
    next_part: Vec<u32>,
    /// Row groups written, as a clock for which file was written least recently.
    row_groups: u64,
    written: EventsWritten,
    pub limits: Limits,
}

impl<'a> EventTables<'a> {
    pub fn new(
        dir: &'a TablesDir,
        trace: &'a Trace,
        spec: &'a Spec,
        classes: &'a [u16],
        clocks: &'a Clocks,
        matching: &'a Matching,
    ) -> Self {
        let mut by_recv: Vec<u32> = (0..matching.messages.len() as u32).collect();
        by_recv.sort_unstable_by_key(|&k| matching.messages[k as usize].1);
        let addrs = trace.addrs.iter().map(|a| a.to_string()).collect();
        let n = trace.nodes.len();
        EventTables {
            dir,
            trace,
            spec,
            classes,
            clocks,
            matching,
            by_recv,
            addrs,
            schema: events_schema(),
            open: (0..n).map(|_| None).collect(),
            buffered: vec![Vec::new(); n],
            buffered_events: 0,
            next_part: vec![0; n],
            row_groups: 0,
            written: EventsWritten { rows: 0, files: Vec::new() },
            limits: Limits::default(),
        }
    }

    /// The message an event is in: the one it received, or the first it sent (a
    /// broadcast's other receives are in `messages`).
    fn msg_id(&self, id: u32) -> Option<u32> {
        let m = &self.matching.messages;
        if self.trace.events[id as usize].dir == Dir::Send {
            let k = m.partition_point(|&(s, _)| s < id);
            (m.get(k).is_some_and(|&(s, _)| s == id)).then_some(k as u32)
        } else {
            let k = self.by_recv.partition_point(|&j| m[j as usize].1 < id);
            self.by_recv.get(k).copied().filter(|&j| m[j as usize].1 == id)
        }
    }

    /// Takes placed events, in global order.
    pub fn push(&mut self, events: &[Placed]) -> Result<(), TablesError> {
        for &p in events {
            let node = self.trace.events[p.id as usize].node as usize;
            self.buffered[node].push(p);
            self.buffered_events += 1;
            if self.buffered[node].len() >= ROW_GROUP_ROWS {
                self.write_row_group(node)?;
            }
            if self.buffered_events > self.limits.buffered_events {
                let largest = (0..self.buffered.len()).max_by_key(|&n| self.buffered[n].len()).expect("a node has events");
                self.write_row_group(largest)?;
            }
        }
        Ok(())
    }

    /// Writes a node's buffered events as one row group. Its encoders, with their
    /// compression contexts, live only meanwhile: one set at a time, not one per node.
    fn write_row_group(&mut self, node: usize) -> Result<(), TablesError> {
        if self.buffered[node].is_empty() {
            return Ok(());
        }
        if self.open[node].is_none() {
            if self.open.iter().flatten().count() >= self.limits.open_files
                && let Some(lru) =
                    (0..self.open.len()).filter(|&i| self.open[i].is_some()).min_by_key(|&i| self.open[i].as_ref().map(|f| f.last_used))
            {
                self.close_node(lru)?;
            }
            let rel = events_part_path(&self.trace.nodes[node].name, self.next_part[node]);
            self.next_part[node] += 1;
            let w = self.dir.writer("events", &rel, self.schema.clone())?;
            self.open[node] = Some(NodeFile { w, rel, rows: 0, last_used: 0 });
        }
        let events = std::mem::take(&mut self.buffered[node]);
        self.buffered_events -= events.len();
        self.row_groups += 1;
        let mut f = self.open[node].take().expect("opened above");
        let perr = |error| TablesError::Parquet { path: self.dir.tmp.join(&f.rel), error };
        for slice in events.chunks(SLICE_ROWS) {
            f.w.write(&self.batch(slice)).map_err(perr)?;
        }
        f.w.flush().map_err(perr)?;
        f.rows += events.len();
        f.last_used = self.row_groups;
        self.written.rows += events.len();
        let full = f.rows >= self.limits.file_rows;
        self.open[node] = Some(f);
        if full {
            self.close_node(node)?;
        }
        Ok(())
    }

    fn close_node(&mut self, node: usize) -> Result<(), TablesError> {
        if let Some(f) = self.open[node].take() {
            let path = self.dir.tmp.join(&f.rel);
            f.w.close().map_err(|error| TablesError::Parquet { path, error })?;
            self.written.files.push(f.rel);
        }
        Ok(())
    }

    /// Writes what is left and finishes every file.
    pub fn finish(mut self) -> Result<EventsWritten, TablesError> {
        for node in 0..self.open.len() {
            self.write_row_group(node)?;
            self.close_node(node)?;
        }
        self.written.files.sort();
        Ok(self.written)
    }

    /// Takes batches of placed events as they arrive (from the order, while it is built).
    pub fn write_from(mut self, batches: std::sync::mpsc::Receiver<Vec<Placed>>) -> Result<EventsWritten, TablesError> {
        for b in batches {
            self.push(&b)?;
        }
        self.finish()
    }

    /// One node's run of events as a record batch.
    fn batch(&self, run: &[Placed]) -> RecordBatch {
        let t = self.trace;
        let n = run.len();
        let mut id = UInt32Builder::with_capacity(n);
        let mut node_id = UInt16Builder::with_capacity(n);
        let mut dir = StringBuilder::with_capacity(n, n * 4);
        let (mut t_raw, mut t_ns, mut t_err) =
            (Int64Builder::with_capacity(n), Int64Builder::with_capacity(n), Int64Builder::with_capacity(n));
        let mut cpu = UInt16Builder::with_capacity(n);
        let mut seq = UInt64Builder::with_capacity(n);
        let mut proto = StringBuilder::with_capacity(n, n * 3);
        let (mut src, mut dst) = (StringBuilder::with_capacity(n, n * 12), StringBuilder::with_capacity(n, n * 12));
        let (mut sport, mut dport) = (UInt16Builder::with_capacity(n), UInt16Builder::with_capacity(n));
        let (mut len, mut caplen) = (UInt32Builder::with_capacity(n), UInt32Builder::with_capacity(n));
        let mut label = StringBuilder::with_capacity(n, n * 24);
        let mut msg_type = StringBuilder::with_capacity(n, n * 8);
        let mut fields = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        let (mut group, mut msg) = (UInt32Builder::with_capacity(n), UInt32Builder::with_capacity(n));
        let mut text = String::with_capacity(64);
        let mut num = itoa::Buffer::new();
        for p in run {
            let i = p.id as usize;
            let e = &t.events[i];
            id.append_value(p.id);
            node_id.append_value(e.node);
            dir.append_value(if e.dir == Dir::Send { "send" } else { "recv" });
            t_raw.append_value(e.t_raw);
            t_ns.append_value(p.t_ns);
            t_err.append_option(self.clocks.nodes[e.node as usize].uncertainty_ns);
            cpu.append_value(e.cpu);
            seq.append_option((e.seq != u64::MAX).then_some(e.seq));
            proto.append_value(e.proto.name());
            src.append_value(&self.addrs[e.src as usize]);
            dst.append_value(&self.addrs[e.dst as usize]);
            let ports = e.proto.has_ports();
            sport.append_option(ports.then_some(e.sport));
            dport.append_option(ports.then_some(e.dport));
            len.append_value(e.orig_len);
            caplen.append_value(e.data_len as u32);
            text.clear();
            push_label(t, self.spec, self.classes, i, &mut text, &mut num);
            label.append_value(&text);
            let class = self.classes[i];
            if class != UNKNOWN {
                let c = class as usize;
                msg_type.append_value(&self.spec.messages[c].name);
                let payload = t.payload(e);
                for (fi, f) in self.spec.messages[c].fields.iter().enumerate() {
                    let Some(v) = self.spec.field(c, fi, payload) else { continue };
                    fields.keys().append_value(&f.name);
                    match v {
                        Value::Int(n) => match f.labels.get(&n) {
                            Some(l) => fields.values().append_value(l),
                            None => fields.values().append_value(num.format(n)),
                        },
                        Value::Text(s) => fields.values().append_value(s),
                    }
                }
            } else {
                msg_type.append_null();
            }
            fields.append(true).expect("as many keys as values");
            group.append_option((p.group != NO_GROUP).then_some(p.group));
            msg.append_option(self.msg_id(p.id));
        }
        let columns = vec![
            arc(id.finish()),
            arc(node_id.finish()),
            arc(dir.finish()),
            arc(t_raw.finish()),
            arc(t_ns.finish()),
            arc(t_err.finish()),
            arc(cpu.finish()),
            arc(seq.finish()),
            arc(proto.finish()),
            arc(src.finish()),
            arc(dst.finish()),
            arc(sport.finish()),
            arc(dport.finish()),
            arc(len.finish()),
            arc(caplen.finish()),
            arc(label.finish()),
            arc(msg_type.finish()),
            arc(fields.finish()),
            arc(group.finish()),
            arc(msg.finish()),
        ];
        RecordBatch::try_new(self.schema.clone(), columns).expect("the columns follow events_schema")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use arrow_array::RecordBatch;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{UInt32Type, UInt64Type};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::{EventTables, Limits, TablesDir, TablesError};
    use crate::analysis::testkit::{BROADCAST, addr, recv, send, trace_in, udp};
    use crate::analysis::{Analysis, Inputs, analyze};

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wgo-parquet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    /// Three nodes: a unicast answered, a broadcast heard by both peers, a message lost.
    fn small() -> Analysis {
        let ms = 1_000_000;
        let base = 1_700_000_000_000_000_000;
        let (n1, n2) = (addr(0), addr(1));
        let n1_events = vec![
            send(base + ms, udp(n1, n2, 1, b"ping")),
            send(base + 3 * ms, udp(n1, BROADCAST, 2, b"hello all")),
            send(base + 500 * ms, udp(n1, n2, 3, b"lost one")),
        ];
        let n2_events = vec![
            recv(base + 2 * ms, udp(n1, n2, 1, b"ping")),
            recv(base + 4 * ms, udp(n1, BROADCAST, 2, b"hello all")),
            send(base + 900 * ms, udp(n2, n1, 9, b"late")),
        ];
        let n3_events = vec![recv(base + 4 * ms, udp(n1, BROADCAST, 2, b"hello all"))];
        analyze(trace_in(vec![n1_events, n2_events, n3_events], (base, base + 1000 * ms)), Inputs::default())
    }

    /// Writes `a`'s tables into `dest` with `limits`, its events in the order's order.
    fn write(a: &Analysis, dest: &Path, limits: Limits) {
        let dir = TablesDir::create(dest).unwrap();
        let mut ev = EventTables::new(&dir, &a.trace, &a.spec, &a.classes, &a.clocks, &a.matching);
        ev.limits = limits;
        for &id in &a.order.order {
            let p = crate::analysis::order::Placed { id, t_ns: a.order.t_ns[id as usize], group: a.order.group[id as usize] };
            ev.push(&[p]).unwrap();
        }
        let events = ev.finish().unwrap();
        dir.finish(a, events).unwrap();
    }

    fn read(path: &Path) -> (Vec<RecordBatch>, std::collections::HashMap<String, String>) {
        let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
        let meta = b.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
        let meta = meta.into_iter().map(|kv| (kv.key, kv.value.unwrap_or_default())).collect();
        (b.build().unwrap().map(|r| r.unwrap()).collect(), meta)
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o700, "{}", p.display());
                out.extend(files(&p));
            } else {
                assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600, "{}", p.display());
                out.push(p);
            }
        }
        out.sort();
        out
    }

    fn u32s(b: &RecordBatch, col: &str) -> Vec<Option<u32>> {
        b.column_by_name(col).unwrap().as_primitive::<UInt32Type>().iter().collect()
    }

    #[test]
    fn a_small_report_reads_back_table_by_table() {
        let a = small();
        assert_eq!(a.matching.messages.len(), 3, "the ping and the broadcast's two receives");
        let root = tempdir("small");
        let dest = root.join("tables");
        write(&a, &dest, Limits::default());
        let all = files(&dest);
        let names: Vec<String> = all.iter().map(|p| p.strip_prefix(&dest).unwrap().display().to_string()).collect();
        assert_eq!(
            names,
            [
                "_wgo_tables.json",
                "anomalies/part-00000.parquet",
                "clock_pairs/part-00000.parquet",
                "events/node=n1/part-00000.parquet",
                "events/node=n2/part-00000.parquet",
                "events/node=n3/part-00000.parquet",
                "findings/part-00000.parquet",
                "messages/part-00000.parquet",
                "nodes/part-00000.parquet",
                "violations/part-00000.parquet",
            ]
        );
        // Each node's events: its own, in global order, with the message each is in.
        let mut seen = Vec::new();
        for (k, node) in ["n1", "n2", "n3"].iter().enumerate() {
            let (batches, meta) = read(&dest.join(format!("events/node={node}/part-00000.parquet")));
            assert_eq!(meta.get(super::VERSION_KEY).map(String::as_str), Some("1"));
            assert_eq!(batches.len(), 1, "{node}: seven events are one batch");
            let b = &batches[0];
            assert_eq!(b.num_rows(), a.trace.node_ranges[k].len(), "{node}");
            let ids: Vec<u32> = u32s(b, "id").into_iter().flatten().collect();
            let t: Vec<i64> = b.column_by_name("t_ns").unwrap().as_primitive::<arrow_array::types::Int64Type>().values().to_vec();
            assert!(t.is_sorted(), "{node}: {t:?}");
            for (&id, msg) in ids.iter().zip(u32s(b, "msg_id")) {
                assert_eq!(a.trace.events[id as usize].node as usize, k);
                let want = a.matching.messages.iter().position(|&(s, r)| s == id || r == id).map(|m| m as u32);
                assert_eq!(msg, want, "event {id}");
            }
            seen.extend(ids);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..a.trace.events.len() as u32).collect::<Vec<_>>());
        // The lost send has no message; the broadcast's send the first of its two.
        let (m, _) = read(&dest.join("messages/part-00000.parquet"));
        assert_eq!(m[0].num_rows(), 3);
        assert_eq!(u32s(&m[0], "send"), a.matching.messages.iter().map(|&(s, _)| Some(s)).collect::<Vec<_>>());
        let (an, _) = read(&dest.join("anomalies/part-00000.parquet"));
        let kinds: Vec<&str> = an[0].column_by_name("kind").unwrap().as_string::<i32>().iter().flatten().collect();
        assert_eq!(kinds.len(), a.anomalies.len());
        let loss = kinds.iter().position(|&k| k == "network_loss").expect("the lost message");
        assert_eq!(an[0].column_by_name("cause").unwrap().as_string::<i32>().value(loss), "network");
        let (nodes, _) = read(&dest.join("nodes/part-00000.parquet"));
        let events: Vec<u64> = nodes[0].column_by_name("events").unwrap().as_primitive::<UInt64Type>().values().to_vec();
        assert_eq!(events, [3, 3, 1]);
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dest.join(super::MANIFEST)).unwrap()).unwrap();
        assert_eq!(manifest["schema_version"], 1);
        assert_eq!(manifest["tables"][0], serde_json::json!({"name": "events", "rows": 7}));
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// With one file open at a time and two rows a file, every node's events still all
    /// arrive, in parts of at most two rows, each in order.
    #[test]
    fn small_limits_roll_parts_and_close_the_least_recent_file() {
        let a = small();
        let root = tempdir("limits");
        let dest = root.join("tables");
        write(&a, &dest, Limits { file_rows: 2, open_files: 1, buffered_events: 1 });
        let mut rows = 0;
        let mut parts = 0;
        for p in files(&dest.join("events")) {
            let (batches, _) = read(&p);
            let n: usize = batches.iter().map(|b| b.num_rows()).sum();
            assert!((1..=2).contains(&n), "{}: {n} rows", p.display());
            rows += n;
            parts += 1;
        }
        assert_eq!(rows, a.trace.events.len());
        assert!(parts >= 5, "{parts} parts");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_dir_that_cannot_be_ours_is_refused_and_a_leftover_replaced() {
        let root = tempdir("bad");
        let file = root.join("file");
        std::fs::write(&file, "mine").unwrap();
        assert!(matches!(TablesDir::create(&file), Err(TablesError::NotADirectory { .. })));
        let link = root.join("link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        assert!(matches!(TablesDir::create(&link), Err(TablesError::Symlink { .. })));
        let foreign = root.join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("x"), "mine").unwrap();
        let err = TablesDir::create(&foreign).err().unwrap();
        assert!(matches!(err, TablesError::NotOurs { .. }) && err.to_string().contains("foreign"), "{err}");
        let under_file = file.join("tables");
        let err = TablesDir::create(&under_file).err().unwrap();
        assert!(err.to_string().contains("file/tables"), "{err}");
        // A directory anyone may write into.
        let open = root.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(TablesDir::create(&open.join("t")), Err(TablesError::Output(_))));
        // A crash's leftover is replaced; a directory at that name that is not one is not.
        let dest = root.join("tables");
        let partial = crate::outfile::partial_path(&dest);
        std::fs::create_dir(&partial).unwrap();
        std::fs::write(partial.join("x"), "mine").unwrap();
        assert!(matches!(TablesDir::create(&dest), Err(TablesError::NotOurs { .. })));
        std::fs::write(partial.join(super::PARTIAL_MARK), "").unwrap();
        let dir = TablesDir::create(&dest).unwrap();
        assert!(!partial.join("x").exists());
        // Dropped before it is finished: nothing is left.
        drop(dir);
        assert!(!partial.exists() && !dest.exists());
        assert_eq!(std::fs::read(&file).unwrap(), b"mine");
        assert_eq!(std::fs::read(foreign.join("x")).unwrap(), b"mine");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_second_report_replaces_the_first_whole() {
        let a = small();
        let root = tempdir("again");
        let dest = root.join("tables");
        write(&a, &dest, Limits::default());
        std::fs::write(dest.join("events/node=n1/part-00009.parquet"), "stale").unwrap();
        write(&a, &dest, Limits::default());
        assert!(!dest.join("events/node=n1/part-00009.parquet").exists(), "a file of the first run is left");
        assert!(dest.join(super::MANIFEST).is_file() && !crate::outfile::partial_path(&dest).exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn partition_values_keep_plain_names_and_escape_the_rest() {
        assert_eq!(super::partition_value("node-1.example_a"), "node-1.example_a");
        assert_eq!(super::partition_value("a/b=c%"), "a%2Fb%3Dc%25");
        assert_eq!(super::partition_value("_x"), "%5Fx");
        assert_eq!(super::partition_value(".x"), "%2Ex");
        assert_eq!(super::partition_value("é"), "%C3%A9");
        assert_eq!(super::events_part_path("n 1", 3), Path::new("events/node=n%201/part-00003.parquet"));
    }

    /// Every table's schema is the one its writer fills (a mismatch would fail here, not
    /// in a user's report).
    #[test]
    fn every_table_has_its_schema_and_version() {
        for t in super::TABLES {
            let s = super::table_schema(t).unwrap_or_else(|| panic!("{t}"));
            assert_eq!(s.metadata().get(super::VERSION_KEY).map(String::as_str), Some("1"), "{t}");
        }
        assert!(super::table_schema("nope").is_none());
    }
}

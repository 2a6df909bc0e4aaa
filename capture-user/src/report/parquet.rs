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
use crate::analysis::trace::{Dir, ProtoCode, Trace};
use crate::analysis::{Analysis, Inputs, Phase, push_label};

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
pub const ROW_GROUP_ROWS: usize = 128 * 1024;
/// Rows per file of a node's events before the next part begins.
pub const FILE_ROWS: usize = 1 << 20;
/// Rows of the other tables per record batch.
pub const BATCH_ROWS: usize = 64 * 1024;
/// Events gathered before they are split per node (so that many nodes still give each
/// writer runs of some length).
const CHUNK_EVENTS: usize = 64 * 1024;
/// Bytes the open event files may buffer in their unfinished row groups, together: past
/// it, the largest is flushed.
const BUFFERED_BYTES: usize = 64 << 20;
/// Event files open at once (a file descriptor and a row group each): past it, the least
/// recently written is finished, and the node's next events begin a new part.
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
        match e {
            TablesError::Io { error, .. } if error.kind() == std::io::ErrorKind::Other => error,
            e => std::io::Error::other(e),
        }
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

    fn writer(&self, rel: &Path, schema: SchemaRef) -> Result<ArrowWriter<BufWriter<File>>, TablesError> {
        let f = self.create_file(rel)?;
        ArrowWriter::try_new(BufWriter::with_capacity(1 << 20, f), schema, Some(properties()))
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
            let w = self.writer(&rel, events_schema())?;
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

fn properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_key_value_metadata(Some(vec![KeyValue::new(VERSION_KEY.to_string(), SCHEMA_VERSION.to_string())]))
        .build()
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
    let mut w = dir.writer(&rel, schema.clone())?;
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
    next_part: Vec<u32>,
    pending: Vec<Placed>,
    chunks: u64,
    written: EventsWritten,
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
            next_part: vec![0; n],
            pending: Vec::with_capacity(CHUNK_EVENTS),
            chunks: 0,
            written: EventsWritten { rows: 0, files: Vec::new() },
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
        for piece in events.chunks(CHUNK_EVENTS) {
            let room = CHUNK_EVENTS - self.pending.len();
            let (now, later) = piece.split_at(room.min(piece.len()));
            self.pending.extend_from_slice(now);
            if self.pending.len() == CHUNK_EVENTS {
                self.write_pending()?;
            }
            self.pending.extend_from_slice(later);
        }
        Ok(())
    }

    /// Writes what is gathered, split per node (each node's in global order).
    fn write_pending(&mut self) -> Result<(), TablesError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.chunks += 1;
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_by_key(|p| self.trace.events[p.id as usize].node);
        for run in pending.chunk_by(|x, y| self.trace.events[x.id as usize].node == self.trace.events[y.id as usize].node) {
            let node = self.trace.events[run[0].id as usize].node as usize;
            let batch = self.batch(run);
            self.write_node(node, &batch)?;
        }
        pending.clear();
        self.pending = pending;
        self.bound_buffers()
    }

    fn write_node(&mut self, node: usize, batch: &RecordBatch) -> Result<(), TablesError> {
        if self.open[node].is_none() {
            if self.open.iter().flatten().count() >= OPEN_FILES
                && let Some(lru) =
                    (0..self.open.len()).filter(|&i| self.open[i].is_some()).min_by_key(|&i| self.open[i].as_ref().map(|f| f.last_used))
            {
                self.close_node(lru)?;
            }
            let rel = events_part_path(&self.trace.nodes[node].name, self.next_part[node]);
            self.next_part[node] += 1;
            let w = self.dir.writer(&rel, self.schema.clone())?;
            self.open[node] = Some(NodeFile { w, rel, rows: 0, last_used: 0 });
        }
        let f = self.open[node].as_mut().expect("opened above");
        f.w.write(batch).map_err(|error| TablesError::Parquet { path: self.dir.tmp.join(&f.rel), error })?;
        f.rows += batch.num_rows();
        f.last_used = self.chunks;
        self.written.rows += batch.num_rows();
        if f.rows >= FILE_ROWS {
            self.close_node(node)?;
        }
        Ok(())
    }

    fn close_node(&mut self, node: usize) -> Result<(), TablesError> {
        if let Some(f) = self.open[node].take() {
            let path = self.dir.tmp.join(&f.rel);
            let w = f.w.close().map_err(|error| TablesError::Parquet { path: path.clone(), error });
            w?;
            self.written.files.push(f.rel);
        }
        Ok(())
    }

    /// Flushes the largest unfinished row groups while they hold more than [`BUFFERED_BYTES`].
    fn bound_buffers(&mut self) -> Result<(), TablesError> {
        loop {
            let sizes = self.open.iter().map(|f| f.as_ref().map_or(0, |f| f.w.in_progress_size()));
            if sizes.clone().sum::<usize>() <= BUFFERED_BYTES {
                return Ok(());
            }
            let (largest, _) = sizes.enumerate().max_by_key(|&(_, s)| s).expect("some file is open");
            let f = self.open[largest].as_mut().expect("it has bytes");
            f.w.flush().map_err(|error| TablesError::Parquet { path: self.dir.tmp.join(&f.rel), error })?;
        }
    }

    /// Finishes every file.
    pub fn finish(mut self) -> Result<EventsWritten, TablesError> {
        self.write_pending()?;
        for node in 0..self.open.len() {
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
            let ports = !matches!(e.proto, ProtoCode::Icmp | ProtoCode::Other);
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

/// Analyzes, writing the events' table while the order places them; the caller then
/// writes the rest with [`TablesDir::finish`].
pub fn analyze_to_tables(trace: Trace, inputs: Inputs, dir: &TablesDir) -> Result<(Analysis, EventsWritten), TablesError> {
    let (a, written) = crate::analysis::analyze_streaming(
        trace,
        inputs,
        Some(|s: crate::analysis::Streamed<'_>| {
            EventTables::new(dir, s.trace, s.spec, s.classes, s.clocks, s.matching).write_from(s.batches)
        }),
    );
    let events = written.expect("a stream was given")?;
    Ok((a, events))
}

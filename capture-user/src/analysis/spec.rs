//! Protocol specs: how an application teaches wgo its packets (TOML).
//!
//! ```toml
//! name = "demo"
//!
//! [[message]]
//! name = "TASK"
//! transport = "udp"                  # optional: udp or tcp
//! port = 7000                        # optional: source or destination port
//! match = [{ offset = 0, ascii = "TASK" }]   # or hex = "5441534b", or u8 = 7
//! display = "TASK #{task}"
//! identity = ["task"]                 # optional: sends with the same values are one request
//!                                     # resent (retries that change other bytes, e.g. a sequence)
//! fields = [
//!   { name = "task", offset = 4, width = 4 },                 # big-endian by default
//!   { name = "kind", offset = 8, width = 1, labels = { 1 = "PREPARE", 2 = "COMMIT" } },
//! ]
//!
//! [[rule]]                            # happens-before edges
//! name = "ack-after-task"
//! event = { message = "ACK", dir = "send" }
//! after = { message = "TASK", dir = "recv" }
//! same_node = true
//! key = ["task"]
//!
//! [[invariant]]                       # checked, violations reported
//! name = "every-task-acked"
//! kind = "answered"                   # request sent, response received by the same node
//! request = "TASK"
//! response = "ACK"
//! key = ["task"]
//! within_ms = 200
//!
//! [[invariant]]
//! name = "ballots-never-decrease"
//! kind = "monotonic"
//! message = "VOTE"
//! field = "ballot"
//! dir = "send"
//!
//! [[invariant]]                       # each such event is reported, with what its node
//! name = "no-aborted-ballots"         # had just received
//! kind = "never"
//! message = "VOTE"
//! where = { phase = "ABORT" }         # a number, or one of the field's labels
//! dir = "send"
//! ```
//!
//! Rule ends take `where` too: `event = { message = "VOTE", dir = "send", where = { phase = "PROMISE" } }`.
//!
//! Every key, by table (all offsets are bytes into the L4 payload, after the UDP or TCP
//! header; only the first `--snaplen` bytes of each packet are captured):
//!
//! | where | key | value |
//! |---|---|---|
//! | top | `name` | the protocol's name (optional) |
//! | `[[message]]` | `name` | required, unique |
//! | | `transport` | `"udp"` or `"tcp"` (default: either) |
//! | | `port` | a source or destination port (0–65535) |
//! | | `match` | a list of `{ offset, ascii = "TEXT" }`, `{ offset, hex = "41 43" }` or `{ offset, u8 = 7 }`, all of which must hold; a message needs a `match` or a `port` |
//! | | `display` | the label, with `{field}` placeholders (a missing or short field shows `?`) |
//! | | `fields` | a list of fields, below |
//! | | `identity` | field names: sends that agree on them are one request resent |
//! | field | `name`, `offset` | required |
//! | | `width` | bytes: 1, 2, 4 or 8 for a number; any for text; optional with `until` |
//! | | `endian` | `"big"` (default) or `"little"`, for numbers |
//! | | `ascii` | `true`: text of `width` bytes, ending early at a NUL; bytes that are not printable show as `.` |
//! | | `until` | text that ends before the first occurrence of this string (e.g. `"\r\n"`), within `width` if given, else within what was captured; it implies `ascii` |
//! | | `labels` | `{ 1 = "PREPARE", … }`: names for a number's values |
//! | `[[rule]]` | `name`, `event`, `after` | required: the event is after the `after` event it matches |
//! | | `same_node` | `true`: both on one node (default `false`) |
//! | | `key` | field names both messages have and must agree on |
//! | rule end | `message` | required |
//! | | `dir` | `"send"`, `"recv"` or `"any"` (default) |
//! | | `where` | `{ field = value }`: a non-negative number, a label of the field, or text for a text field |
//! | `[[invariant]]` | `name`, `kind` | required; `kind` is `"answered"`, `"monotonic"` or `"never"` |
//! | answered | `request`, `response`, `within_ms` | required: every request sent gets a response received by its sender within `within_ms` (a number of milliseconds, e.g. `200` or `2.5`) |
//! | | `key` | field names request and response agree on |
//! | monotonic | `message`, `field` | required: the field never decreases, per node |
//! | | `dir` | as for rule ends |
//! | never | `message` | required: each such event is a violation |
//! | | `dir`, `where` | as for rule ends |
//!
//! `wgo report`'s summary says how many packets each message matched, and warns about a
//! message that matched none, a rule that added no edge and an invariant whose message
//! matched nothing (it holds vacuously): a typo in a port or a match loads cleanly.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::trace::{Dir, Event, ProtoCode, Trace};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{file}: line {line}: {message}")]
    At { file: String, line: usize, message: String },
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("{file}: larger than {max} bytes, more than any protocol's spec needs")]
    TooLarge { file: String, max: u64 },
}

/// The largest spec read: 4 MiB is some 40 000 messages, and loads in well under a second.
pub const MAX_SPEC_BYTES: u64 = 4 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    message: Vec<MessageToml>,
    #[serde(default)]
    rule: Vec<RuleToml>,
    #[serde(default)]
    invariant: Vec<InvariantToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageToml {
    name: Spanned<String>,
    #[serde(default)]
    transport: Option<Spanned<String>>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(rename = "match", default)]
    matches: Vec<Spanned<MatchToml>>,
    #[serde(default)]
    display: Option<Spanned<String>>,
    #[serde(default)]
    fields: Vec<Spanned<FieldToml>>,
    #[serde(default)]
    identity: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchToml {
    offset: usize,
    #[serde(default)]
    ascii: Option<String>,
    #[serde(default)]
    hex: Option<String>,
    #[serde(default)]
    u8: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldToml {
    name: String,
    offset: usize,
    #[serde(default)]
    width: Option<usize>,
    #[serde(default)]
    endian: Option<String>,
    #[serde(default)]
    ascii: bool,
    /// A text field ends before the first of these bytes (e.g. "\r\n").
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndToml {
    message: Spanned<String>,
    #[serde(default)]
    dir: Option<Spanned<String>>,
    /// Field values the event must have: a number, or one of the field's labels.
    #[serde(default, rename = "where")]
    filter: BTreeMap<String, Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    name: Spanned<String>,
    event: EndToml,
    after: EndToml,
    #[serde(default)]
    same_node: bool,
    #[serde(default)]
    key: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvariantToml {
    name: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    request: Option<Spanned<String>>,
    #[serde(default)]
    response: Option<Spanned<String>>,
    #[serde(default)]
    key: Vec<Spanned<String>>,
    #[serde(default)]
    within_ms: Option<Spanned<toml::Value>>,
    #[serde(default)]
    message: Option<Spanned<String>>,
    #[serde(default)]
    field: Option<Spanned<String>>,
    #[serde(default)]
    dir: Option<Spanned<String>>,
    #[serde(default, rename = "where")]
    filter: BTreeMap<String, Spanned<toml::Value>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endian {
    Big,
    Little,
}

#[derive(Clone, Debug)]
pub struct FieldDef {
    pub name: String,
    pub offset: usize,
    pub width: usize,
    pub endian: Endian,
    pub ascii: bool,
    pub labels: BTreeMap<u64, String>,
    /// A text field that ends before the first occurrence of these bytes (within `width`,
    /// or the captured payload where `width` is 0).
    pub until: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
pub struct MessageDef {
    pub name: String,
    pub transport: Option<ProtoCode>,
    pub port: Option<u16>,
    /// (offset, bytes) that must all be present.
    pub pattern: Vec<(usize, Vec<u8>)>,
    pub display: Option<String>,
    pub fields: Vec<FieldDef>,
    /// Fields whose values identify a request: sends that agree on them are one request
    /// sent again, whatever else changed.
    pub identity: Vec<usize>,
    /// The display format split once, so that labelling millions of events does not
    /// parse it again for each.
    label_parts: Vec<LabelPart>,
}

#[derive(Clone, Debug)]
enum LabelPart {
    Text(String),
    /// A field's index.
    Field(usize),
}

/// Splits a display format into text and fields (by index); an unclosed brace is text.
fn label_parts(fmt: &str, fields: &[FieldDef]) -> Vec<LabelPart> {
    let mut parts = Vec::new();
    let mut rest = fmt;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        if open > 0 {
            parts.push(LabelPart::Text(rest[..open].to_string()));
        }
        let name = &rest[open + 1..open + close];
        match fields.iter().position(|f| f.name == name) {
            Some(i) => parts.push(LabelPart::Field(i)),
            None => parts.push(LabelPart::Text("?".into())),
        }
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(LabelPart::Text(rest.to_string()));
    }
    parts
}

/// Which events an end of a rule selects.
#[derive(Clone, Debug)]
pub struct EventSel {
    pub message: usize,
    pub dir: Option<Dir>,
    /// (field index, value) pairs the event's fields must equal.
    pub filter: Vec<(usize, Value)>,
}

#[derive(Clone, Debug)]
pub struct RuleDef {
    pub name: String,
    pub event: EventSel,
    pub after: EventSel,
    pub same_node: bool,
    /// Field indices in (event message, after message), compared for equality.
    pub key: Vec<(usize, usize)>,
    pub line: usize,
}

#[derive(Clone, Debug)]
pub enum InvariantDef {
    Answered {
        name: String,
        request: usize,
        response: usize,
        key: Vec<(usize, usize)>,
        within_ns: i64,
    },
    Monotonic {
        name: String,
        message: usize,
        field: usize,
        dir: Option<Dir>,
    },
    /// Events that should never happen; each is reported with what its node had just received.
    Never {
        name: String,
        sel: EventSel,
    },
}

impl InvariantDef {
    pub fn name(&self) -> &str {
        match self {
            InvariantDef::Answered { name, .. } | InvariantDef::Monotonic { name, .. } | InvariantDef::Never { name, .. } => name,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Spec {
    pub name: String,
    pub messages: Vec<MessageDef>,
    pub rules: Vec<RuleDef>,
    pub invariants: Vec<InvariantDef>,
}

/// A decoded field value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    Int(u64),
    Text(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Text(s) => f.write_str(s),
        }
    }
}

fn line_of(text: &str, span: Range<usize>) -> usize {
    text[..span.start.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

impl Spec {
    /// Reads and parses a spec: a regular file of at most [`MAX_SPEC_BYTES`].
    pub fn load(path: &std::path::Path) -> Result<Spec, SpecError> {
        use std::io::Read;
        let file = path.display().to_string();
        let io = |source| SpecError::Io { file: file.clone(), source };
        let mut text = String::new();
        // Bounded as it is read, not only by its size now: a file may grow.
        crate::outfile::open_regular(path).map_err(io)?.take(MAX_SPEC_BYTES + 1).read_to_string(&mut text).map_err(io)?;
        if text.len() as u64 > MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge { file, max: MAX_SPEC_BYTES });
        }
        Spec::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Spec, SpecError> {
        let err = |span: Range<usize>, message: String| SpecError::At { file: file.to_string(), line: line_of(text, span), message };
        let raw: SpecFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s));
            SpecError::At { file: file.to_string(), line, message: plain_types(e.message()) }
        })?;
        let mut spec = Spec { name: raw.name.unwrap_or_else(|| "protocol".into()), ..Spec::default() };
        // Messages by name: a lookup per message, rule and invariant, not a scan (a spec
        // of 200 000 messages loaded in over a minute).
        let mut by_name: std::collections::HashMap<String, usize> = std::collections::HashMap::with_capacity(raw.message.len());
        for m in &raw.message {
            if by_name.insert(m.name.get_ref().clone(), spec.messages.len()).is_some() {
                return Err(err(m.name.span(), format!("message {} is defined twice", m.name.get_ref())));
            }
            let transport = match m.transport.as_ref().map(|t| (t.get_ref().as_str(), t.span())) {
                None => None,
                Some(("udp", _)) => Some(ProtoCode::Udp),
                Some(("tcp", _)) => Some(ProtoCode::Tcp),
                Some((other, span)) => return Err(err(span, format!("transport must be \"udp\" or \"tcp\", not {other:?}"))),
            };
            let mut pattern = Vec::new();
            for p in &m.matches {
                let span = p.span();
                let p = p.get_ref();
                let bytes = match (&p.ascii, &p.hex, p.u8) {
                    (Some(a), None, None) => a.as_bytes().to_vec(),
                    (None, Some(h), None) => parse_hex(h).ok_or_else(|| err(span.clone(), format!("{h:?} is not hex bytes")))?,
                    (None, None, Some(b)) => vec![b],
                    _ => return Err(err(span, "a match needs exactly one of ascii, hex or u8".into())),
                };
                pattern.push((p.offset, bytes));
            }
            if pattern.is_empty() && m.port.is_none() {
                return Err(err(
                    m.name.span(),
                    format!("message {} has no match and no port: it would match every packet", m.name.get_ref()),
                ));
            }
            let mut fields = Vec::new();
            for f in &m.fields {
                let span = f.span();
                let f = f.get_ref();
                let until = match &f.until {
                    Some(d) if d.is_empty() => return Err(err(span, format!("field {}: until needs at least one byte", f.name))),
                    Some(d) => Some(d.as_bytes().to_vec()),
                    None => None,
                };
                // A field that ends at a delimiter is text, and its width (optional) a bound.
                let ascii = f.ascii || until.is_some();
                let width = match (f.width, &until) {
                    (Some(w), _) => w,
                    (None, Some(_)) => 0,
                    (None, None) => {
                        return Err(err(
                            span,
                            format!("field {}: give its width in bytes (or until = \"…\", for text that ends at a delimiter)", f.name),
                        ));
                    }
                };
                if !ascii && ![1, 2, 4, 8].contains(&width) {
                    return Err(err(
                        span,
                        format!("field {}: width must be 1, 2, 4 or 8 bytes (or set ascii = true), not {width}", f.name),
                    ));
                }
                if ascii && until.is_none() && width == 0 {
                    return Err(err(span, format!("field {}: an ascii field needs a width, or until = \"…\"", f.name)));
                }
                let endian = match f.endian.as_deref() {
                    None | Some("big") => Endian::Big,
                    Some("little") => Endian::Little,
                    Some(o) => return Err(err(span, format!("field {}: endian must be \"big\" or \"little\", not {o:?}", f.name))),
                };
                let mut labels = BTreeMap::new();
                for (k, v) in &f.labels {
                    let n: u64 = k.parse().map_err(|_| err(span.clone(), format!("field {}: label key {k:?} is not a number", f.name)))?;
                    labels.insert(n, v.clone());
                }
                fields.push(FieldDef { name: f.name.clone(), offset: f.offset, width, endian, ascii, labels, until });
            }
            if let Some(d) = &m.display {
                for name in placeholders(d.get_ref()) {
                    if !fields.iter().any(|f| f.name == name) {
                        return Err(err(
                            d.span(),
                            format!("display of {} uses {{{name}}}, which is not one of its fields", m.name.get_ref()),
                        ));
                    }
                }
            }
            let label_parts = m.display.as_ref().map_or_else(Vec::new, |d| label_parts(d.get_ref(), &fields));
            let mut identity = Vec::new();
            for name in &m.identity {
                let k = fields.iter().position(|f| f.name == *name.get_ref()).ok_or_else(|| {
                    err(name.span(), format!("identity of {} names {}, which is not one of its fields", m.name.get_ref(), name.get_ref()))
                })?;
                identity.push(k);
            }
            spec.messages.push(MessageDef {
                name: m.name.get_ref().clone(),
                transport,
                port: m.port,
                pattern,
                display: m.display.as_ref().map(|d| d.get_ref().clone()),
                fields,
                identity,
                label_parts,
            });
        }
        let msg = |_: &Spec, name: &Spanned<String>| {
            by_name.get(name.get_ref()).copied().ok_or_else(|| err(name.span(), format!("no message is named {}", name.get_ref())))
        };
        // Where each line starts, for the line of every rule.
        let line_starts: Vec<usize> = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        let line_at = |span: Range<usize>| line_starts.partition_point(|&s| s <= span.start.min(text.len()));
        let dir = |d: &Option<Spanned<String>>| match d.as_ref().map(|d| (d.get_ref().as_str(), d.span())) {
            None | Some(("any", _)) => Ok(None),
            Some(("send", _)) => Ok(Some(Dir::Send)),
            Some(("recv", _)) => Ok(Some(Dir::Recv)),
            Some((o, span)) => Err(err(span, format!("dir must be \"send\", \"recv\" or \"any\", not {o:?}"))),
        };
        let key = |spec: &Spec, a: usize, b: usize, key: &[Spanned<String>]| {
            key.iter()
                .map(|k| {
                    let fa = spec.messages[a].fields.iter().position(|f| f.name == *k.get_ref());
                    let fb = spec.messages[b].fields.iter().position(|f| f.name == *k.get_ref());
                    match (fa, fb) {
                        (Some(x), Some(y)) => Ok((x, y)),
                        _ => Err(err(
                            k.span(),
                            format!("key {} must be a field of both {} and {}", k.get_ref(), spec.messages[a].name, spec.messages[b].name),
                        )),
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let filter = |spec: &Spec, message: usize, f: &BTreeMap<String, Spanned<toml::Value>>| {
            f.iter()
                .map(|(name, v)| {
                    let m = &spec.messages[message];
                    let fi = m
                        .fields
                        .iter()
                        .position(|x| x.name == *name)
                        .ok_or_else(|| err(v.span(), format!("{} has no field {name}", m.name)))?;
                    let value = match v.get_ref() {
                        toml::Value::Integer(n) if *n >= 0 => Value::Int(*n as u64),
                        toml::Value::String(s) if m.fields[fi].ascii => Value::Text(s.clone()),
                        toml::Value::String(s) => match m.fields[fi].labels.iter().find(|(_, l)| *l == s) {
                            Some((n, _)) => Value::Int(*n),
                            None => return Err(err(v.span(), format!("field {name} of {} has no label {s:?}", m.name))),
                        },
                        _ => return Err(err(v.span(), format!("where {name}: give a non-negative number or a label"))),
                    };
                    Ok((fi, value))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let sel = |spec: &Spec, e: &EndToml| -> Result<EventSel, SpecError> {
            let message = msg(spec, &e.message)?;
            Ok(EventSel { message, dir: dir(&e.dir)?, filter: filter(spec, message, &e.filter)? })
        };
        for r in &raw.rule {
            let event = sel(&spec, &r.event)?;
            let after = sel(&spec, &r.after)?;
            let k = key(&spec, event.message, after.message, &r.key)?;
            spec.rules.push(RuleDef {
                name: r.name.get_ref().clone(),
                event,
                after,
                same_node: r.same_node,
                key: k,
                line: line_at(r.name.span()),
            });
        }
        for inv in &raw.invariant {
            let need = |f: &Option<Spanned<String>>, what: &str| {
                f.clone().ok_or_else(|| {
                    err(inv.kind.span(), format!("invariant {} of kind {} needs {what}", inv.name.get_ref(), inv.kind.get_ref()))
                })
            };
            let def = match inv.kind.get_ref().as_str() {
                "answered" => {
                    let request = msg(&spec, &need(&inv.request, "request")?)?;
                    let response = msg(&spec, &need(&inv.response, "response")?)?;
                    let within = match inv.within_ms.as_ref().map(|v| (v.get_ref(), v.span())) {
                        None => return Err(err(inv.kind.span(), format!("invariant {} needs within_ms", inv.name.get_ref()))),
                        Some((toml::Value::Integer(n), _)) => *n as f64,
                        Some((toml::Value::Float(x), _)) => *x,
                        Some((other, span)) => {
                            return Err(err(span, format!("within_ms must be a number of milliseconds (within_ms = 200), not {other}")));
                        }
                    };
                    // NaN and infinity pass a plain `<= 0` test and then compare false with every time.
                    if !(within > 0.0 && within.is_finite()) {
                        return Err(err(
                            inv.kind.span(),
                            format!("within_ms must be a positive, finite number of milliseconds, not {within}"),
                        ));
                    }
                    InvariantDef::Answered {
                        name: inv.name.get_ref().clone(),
                        request,
                        response,
                        key: key(&spec, request, response, &inv.key)?,
                        within_ns: (within * 1e6) as i64,
                    }
                }
                "monotonic" => {
                    let message = msg(&spec, &need(&inv.message, "message")?)?;
                    let field_name = need(&inv.field, "field")?;
                    let field = spec.messages[message].fields.iter().position(|f| f.name == *field_name.get_ref()).ok_or_else(|| {
                        err(field_name.span(), format!("{} has no field {}", spec.messages[message].name, field_name.get_ref()))
                    })?;
                    InvariantDef::Monotonic { name: inv.name.get_ref().clone(), message, field, dir: dir(&inv.dir)? }
                }
                "never" => {
                    let message = msg(&spec, &need(&inv.message, "message")?)?;
                    InvariantDef::Never {
                        name: inv.name.get_ref().clone(),
                        sel: EventSel { message, dir: dir(&inv.dir)?, filter: filter(&spec, message, &inv.filter)? },
                    }
                }
                other => {
                    return Err(err(
                        inv.kind.span(),
                        format!("invariant kind must be \"answered\", \"monotonic\" or \"never\", not {other:?}"),
                    ));
                }
            };
            spec.invariants.push(def);
        }
        Ok(spec)
    }

    /// Which message an event is, if any (first definition that matches wins).
    pub fn classify(&self, trace: &Trace, e: &Event) -> Option<usize> {
        let payload = trace.payload(e);
        self.messages.iter().position(|m| {
            m.transport.is_none_or(|t| t == e.proto)
                && m.port.is_none_or(|p| p == e.sport || p == e.dport)
                && (e.proto == ProtoCode::Udp || e.proto == ProtoCode::Tcp)
                && m.pattern.iter().all(|(off, bytes)| payload.get(*off..off + bytes.len()) == Some(bytes.as_slice()))
        })
    }

    pub fn field(&self, message: usize, field: usize, payload: &[u8]) -> Option<Value> {
        let f = &self.messages[message].fields[field];
        if let Some(delim) = &f.until {
            let end = if f.width == 0 { payload.len() } else { payload.len().min(f.offset + f.width) };
            let b = payload.get(f.offset..end)?;
            let b = b.windows(delim.len()).position(|w| w == delim.as_slice()).map_or(b, |at| &b[..at]);
            return Some(Value::Text(b.iter().map(|&c| if c.is_ascii_graphic() || c == b' ' { c as char } else { '.' }).collect()));
        }
        let b = payload.get(f.offset..f.offset + f.width)?;
        if f.ascii {
            let s: String =
                b.iter().take_while(|&&c| c != 0).map(|&c| if c.is_ascii_graphic() || c == b' ' { c as char } else { '.' }).collect();
            return Some(Value::Text(s));
        }
        let mut v = 0u64;
        match f.endian {
            Endian::Big => b.iter().for_each(|&x| v = (v << 8) | x as u64),
            Endian::Little => b.iter().rev().for_each(|&x| v = (v << 8) | x as u64),
        }
        Some(Value::Int(v))
    }

    /// Every field, with its label when it has one.
    pub fn fields(&self, message: usize, payload: &[u8]) -> Vec<(String, Value, Option<String>)> {
        let m = &self.messages[message];
        (0..m.fields.len())
            .filter_map(|i| {
                let v = self.field(message, i, payload)?;
                let label = match &v {
                    Value::Int(n) => m.fields[i].labels.get(n).cloned(),
                    Value::Text(_) => None,
                };
                Some((m.fields[i].name.clone(), v, label))
            })
            .collect()
    }

    /// The display text, e.g. `TASK #1273`.
    pub fn label(&self, message: usize, payload: &[u8]) -> String {
        let mut out = String::new();
        self.write_label(message, payload, &mut out);
        out
    }

    /// Appends the display text to `out` (no allocation for integer fields).
    pub fn write_label(&self, message: usize, payload: &[u8], out: &mut String) {
        let m = &self.messages[message];
        if m.display.is_none() {
            out.push_str(&m.name);
            return;
        }
        for part in &m.label_parts {
            match part {
                LabelPart::Text(t) => out.push_str(t),
                LabelPart::Field(i) => match self.field(message, *i, payload) {
                    Some(Value::Int(n)) => match m.fields[*i].labels.get(&n) {
                        Some(l) => out.push_str(l),
                        None => out.push_str(itoa::Buffer::new().format(n)),
                    },
                    Some(Value::Text(t)) => out.push_str(&t),
                    None => out.push('?'),
                },
            }
        }
    }
}

/// The TOML reader's words for types ("expected f64") in the spec's words.
fn plain_types(message: &str) -> String {
    message
        .replace("expected f64", "expected a number")
        .replace("expected usize", "expected a whole number of bytes (0 or more)")
        .replace("expected u16", "expected a port number (0 to 65535)")
        .replace("expected u8", "expected a byte value (0 to 255)")
        .replace("expected a boolean", "expected true or false")
}

/// How much of a trace each part of a spec matched: a typo in a port or a match leaves a
/// message matching nothing, and whatever uses it vacuous.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecUsage {
    /// Packets (events, sends and receives) each message matched, in spec order.
    pub messages: Vec<usize>,
    /// Happens-before edges each rule added.
    pub rules: Vec<usize>,
    /// Events of the message each invariant is about (an answered one's request).
    pub invariants: Vec<usize>,
}

impl Spec {
    /// What each message, rule and invariant matched, from the events' classes (a message
    /// index, or anything past the messages for none) and the rule edges' rule indices.
    pub fn usage(&self, classes: &[u16], rule_of_edge: impl IntoIterator<Item = usize>) -> SpecUsage {
        let mut messages = vec![0; self.messages.len()];
        for &c in classes {
            if let Some(n) = messages.get_mut(c as usize) {
                *n += 1;
            }
        }
        let mut rules = vec![0; self.rules.len()];
        for r in rule_of_edge {
            if let Some(n) = rules.get_mut(r) {
                *n += 1;
            }
        }
        let invariants = self
            .invariants
            .iter()
            .map(|i| match i {
                InvariantDef::Answered { request, .. } => messages[*request],
                InvariantDef::Monotonic { message, .. } => messages[*message],
                InvariantDef::Never { sel, .. } => messages[sel.message],
            })
            .collect();
        SpecUsage { messages, rules, invariants }
    }
}

fn placeholders(fmt: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = fmt;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        out.push(rest[open + 1..open + close].to_string());
        rest = &rest[open + close + 1..];
    }
    out
}

fn parse_hex(h: &str) -> Option<Vec<u8>> {
    let digits: String = h.chars().filter(|c| !c.is_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    (0..digits.len() / 2).map(|i| u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
name = "t"

[[message]]
name = "TASK"
match = [{ offset = 0, ascii = "TASK" }]
display = "TASK #{task}"
fields = [{ name = "task", offset = 4, width = 4 }]

[[message]]
name = "ACK"
match = [{ offset = 0, hex = "41 43 4b 21" }]
display = "ACK #{task} {kind}"
fields = [
  { name = "task", offset = 4, width = 4 },
  { name = "kind", offset = 8, width = 1, labels = { 1 = "ok", 2 = "retry" } },
]

[[rule]]
name = "ack-after-task"
event = { message = "ACK", dir = "send" }
after = { message = "TASK", dir = "recv" }
same_node = true
key = ["task"]

[[invariant]]
name = "acked"
kind = "answered"
request = "TASK"
response = "ACK"
key = ["task"]
within_ms = 200
"#;

    #[test]
    fn identity_names_fields_and_a_wrong_name_is_an_error_with_its_line() {
        let ok = "[[message]]\nname = \"TASK\"\nmatch = [{ offset = 0, ascii = \"TASK\" }]\nfields = [{ name = \"task\", offset = 4, width = 4 }]\nidentity = [\"task\"]\n";
        let spec = Spec::parse(ok, "t.toml").unwrap();
        assert_eq!(spec.messages[0].identity, vec![0]);
        let bad = ok.replace("identity = [\"task\"]", "identity = [\"seq\"]");
        let e = Spec::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.contains("t.toml: line 5") && e.contains("identity of TASK names seq"), "{e}");
    }

    #[test]
    fn labels_keep_text_around_fields_and_an_unclosed_brace_as_text() {
        let spec = SPEC.replace("display = \"ACK #{task} {kind}\"", "display = \"{kind}: ACK #{task} {oops\"");
        let s = Spec::parse(&spec, "t.toml").unwrap();
        let mut ack = b"ACK!".to_vec();
        ack.extend_from_slice(&7u32.to_be_bytes());
        ack.push(1);
        assert_eq!(s.label(1, &ack), "ok: ACK #7 {oops");
        // A payload too short for a field shows "?" there.
        assert_eq!(s.label(1, b"ACK!"), "?: ACK #? {oops");
    }

    #[test]
    fn parses_and_decodes() {
        let s = Spec::parse(SPEC, "t.toml").unwrap();
        assert_eq!(s.messages.len(), 2);
        assert_eq!(s.rules[0].key, vec![(0, 0)]);
        let mut ack = b"ACK!".to_vec();
        ack.extend_from_slice(&1273u32.to_be_bytes());
        ack.push(2);
        assert_eq!(s.label(1, &ack), "ACK #1273 retry");
        assert_eq!(s.field(1, 0, &ack), Some(Value::Int(1273)));
        assert!(matches!(&s.invariants[0], InvariantDef::Answered { within_ns: 200_000_000, .. }));
    }

    #[test]
    fn where_filters_and_never_invariants() {
        let text = r#"
[[message]]
name = "VOTE"
match = [{ offset = 0, ascii = "VOTE" }]
fields = [
  { name = "phase", offset = 4, width = 1, labels = { 1 = "PREPARE", 4 = "ABORT" } },
  { name = "ballot", offset = 5, width = 4 },
]

[[invariant]]
name = "no-aborts"
kind = "never"
message = "VOTE"
where = { phase = "ABORT" }
dir = "send"
"#;
        let s = Spec::parse(text, "v.toml").unwrap();
        match &s.invariants[0] {
            InvariantDef::Never { sel, .. } => assert_eq!(sel.filter, vec![(0, Value::Int(4))]),
            other => panic!("{other:?}"),
        }
        let e = Spec::parse(&text.replace("\"ABORT\" }\ndir", "\"ABORTED\" }\ndir"), "v.toml").unwrap_err().to_string();
        assert!(e.contains("line 14") && e.contains("no label \"ABORTED\""), "{e}");
        let e = Spec::parse(&text.replace("where = { phase", "where = { stage"), "v.toml").unwrap_err().to_string();
        assert!(e.contains("VOTE has no field stage"), "{e}");
    }

    #[test]
    fn a_spec_that_is_not_a_bounded_regular_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("wgo-spec-bounds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("spec.toml");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A FIFO nobody writes to hangs a blocking read; /dev/zero never ends.
        for (p, what) in [(fifo.clone(), "a FIFO"), (std::path::PathBuf::from("/dev/zero"), "a character device")] {
            let err = Spec::load(&p).unwrap_err().to_string();
            assert!(err.contains(&p.display().to_string()) && err.contains(what), "{err}");
        }
        let big = dir.join("big.toml");
        let mut text = SPEC.to_string();
        while (text.len() as u64) <= MAX_SPEC_BYTES {
            text.push_str("# padding, padding, padding, padding, padding, padding, padding\n");
        }
        std::fs::write(&big, &text).unwrap();
        let err = Spec::load(&big).unwrap_err();
        assert!(matches!(err, SpecError::TooLarge { .. }) && err.to_string().contains("larger than"), "{err}");
        std::fs::write(&big, SPEC).unwrap();
        assert_eq!(Spec::load(&big).unwrap().messages.len(), Spec::parse(SPEC, "t").unwrap().messages.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_line() {
        let bad = SPEC.replace("after = { message = \"TASK\"", "after = { message = \"TASKS\"");
        let e = Spec::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.starts_with("t.toml: line 22:") && e.contains("no message is named TASKS"), "{e}");

        let bad = SPEC.replace("width = 4 }]", "width = 3 }]");
        let e = Spec::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.contains("line 8") && e.contains("width must be 1, 2, 4 or 8"), "{e}");

        let e = Spec::parse("[[message]]\nname = 1\n", "x.toml").unwrap_err().to_string();
        assert!(e.starts_with("x.toml: line 2:"), "{e}");

        let e = Spec::parse("[[message]\n", "x.toml").unwrap_err().to_string();
        assert!(e.starts_with("x.toml: line 1:"), "{e}");

        let bad = SPEC.replace("key = [\"task\"]\n\n[[invariant]]", "key = [\"kind\"]\n\n[[invariant]]");
        let e = Spec::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.contains("key kind must be a field of both ACK and TASK"), "{e}");

        let e = Spec::parse("[[message]]\nname = \"X\"\nbogus = 1\n", "x.toml").unwrap_err().to_string();
        assert!(e.contains("line 3") || e.contains("line 1"), "{e}");
    }

    #[test]
    fn within_ms_must_be_a_positive_finite_number() {
        assert!(Spec::parse(SPEC, "t.toml").is_ok());
        for bad in ["inf", "nan", "-inf", "0", "-5"] {
            let spec = SPEC.replace("within_ms = 200", &format!("within_ms = {bad}"));
            assert_ne!(spec, SPEC);
            let e = Spec::parse(&spec, "t.toml").unwrap_err().to_string();
            assert!(e.contains("within_ms must be a positive, finite number") && e.contains("line "), "{bad}: {e}");
        }
    }

    #[test]
    fn text_fields_can_end_at_a_delimiter() {
        let text = r#"
[[message]]
name = "INT"
port = 6379
match = [{ offset = 0, ascii = ":" }]
display = "reply {n} then {rest}"
fields = [
  { name = "n", offset = 1, until = "\r\n" },
  { name = "short", offset = 1, width = 2, until = "\r\n" },
  { name = "rest", offset = 6, ascii = true, width = 3 },
]
"#;
        let s = Spec::parse(text, "r.toml").unwrap();
        let p = b":642\r\n+OK";
        assert_eq!(s.field(0, 0, p), Some(Value::Text("642".into())));
        assert_eq!(s.field(0, 1, p), Some(Value::Text("64".into())), "width bounds it");
        assert_eq!(s.label(0, p), "reply 642 then +OK");
        // No delimiter in what was captured: the text runs to its end.
        assert_eq!(s.field(0, 0, b":12345"), Some(Value::Text("12345".into())));
        assert_eq!(s.field(0, 0, b""), None);
        let e = Spec::parse(&text.replace("until = \"\\r\\n\" }", "until = \"\" }"), "r.toml").unwrap_err().to_string();
        assert!(e.contains("line 8") && e.contains("until needs at least one byte"), "{e}");
        let e = Spec::parse(&text.replace(", until = \"\\r\\n\" }", " }"), "r.toml").unwrap_err().to_string();
        assert!(e.contains("field n: give its width in bytes"), "{e}");
    }

    #[test]
    fn type_mistakes_are_said_in_the_spec_s_words() {
        let e = Spec::parse(&SPEC.replace("within_ms = 200", "within_ms = \"200ms\""), "t.toml").unwrap_err().to_string();
        assert!(e.contains("within_ms must be a number of milliseconds") && e.contains("\"200ms\""), "{e}");
        assert!(e.contains("line "), "{e}");
        assert!(!e.contains("f64"), "{e}");
        let e = Spec::parse(&SPEC.replacen("offset = 4", "offset = \"4\"", 1), "t.toml").unwrap_err().to_string();
        assert!(e.contains("expected a whole number of bytes") && !e.contains("usize"), "{e}");
        assert!(Spec::parse(&SPEC.replace("within_ms = 200", "within_ms = 2.5"), "t.toml").is_ok());
    }

    #[test]
    fn usage_counts_what_each_message_rule_and_invariant_matched() {
        let s = Spec::parse(SPEC, "t.toml").unwrap();
        let (task, ack) =
            (s.messages.iter().position(|m| m.name == "TASK").unwrap(), s.messages.iter().position(|m| m.name == "ACK").unwrap());
        let unknown = u16::MAX;
        let classes = [task as u16, task as u16, unknown, task as u16];
        let u = s.usage(&classes, [0, 0]);
        assert_eq!(u.messages[task], 3);
        assert_eq!(u.messages[ack], 0);
        assert_eq!(u.rules, vec![2]);
        // The answered invariant is about its request, TASK: 3 packets.
        assert_eq!(u.invariants, vec![3]);
        let none = s.usage(&[unknown; 4], []);
        assert!(none.messages.iter().all(|&n| n == 0) && none.rules.iter().all(|&n| n == 0) && none.invariants.iter().all(|&n| n == 0));
    }
}

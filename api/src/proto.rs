//! Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`),
//! read into the JSON shape the rest of the API works with.
//!
//! kubectl's typed generators (`kubectl create deployment|configmap|secret|
//! job|...`, `kubectl run`, `kubectl expose`, `kubectl drain`'s evictions)
//! send protobuf: a `k8s\0` magic, then a `runtime.Unknown` envelope naming
//! the apiVersion and kind around the object's bytes. The object is decoded
//! with the field table in `proto/schema.txt` (field numbers and wire types
//! from Kubernetes' `generated.proto`, JSON names from the OpenAPI types;
//! regenerate with `cargo xtask proto-schema`).
//!
//! What Go's JSON encoding of the same object would say is what comes out:
//! `metav1.Time` as RFC 3339 (the zero time as absent), `Quantity` as its
//! string, `IntOrString` as a number or a string, `RawExtension` as the
//! embedded JSON, bytes as base64. Empty strings are dropped: Go writes
//! every non-pointer string field, set or not, and "" means unset for all
//! but a few pointer fields no kubectl generator sets. Numbers and booleans
//! are kept as sent, zero and false included (a pointer's `replicas: 0` or
//! `allowPrivilegeEscalation: false` means something); for non-pointer
//! fields zero means the same as absent, as in Kubernetes.
//!
//! Malformed input of any kind is an error that says where it broke, never
//! a panic.

use std::{collections::HashMap, sync::LazyLock};

use base64::Engine as _;
use serde_json::{Map, Value};

/// The magic every Kubernetes protobuf document opens with.
pub const MAGIC: &[u8] = b"k8s\0";
/// The media type.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// The JSON name of an embedded (inline) struct's field in the table.
const INLINE: &str = "-";
/// Nesting deeper than this is refused (Kubernetes objects nest ~15 deep).
const MAX_DEPTH: usize = 100;

/// Why a protobuf body could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// No `k8s\0` magic.
    #[error(
        "the body does not start with Kubernetes' protobuf magic \"k8s\\x00\" (send JSON or a runtime.Unknown envelope)"
    )]
    NoMagic,
    /// The envelope names a kind shoal has no protobuf schema for.
    #[error(
        "no protobuf schema for apiVersion {api_version:?} kind {kind:?}: send this object as JSON"
    )]
    UnknownKind {
        /// The envelope's apiVersion.
        api_version: String,
        /// The envelope's kind.
        kind: String,
    },
    /// The envelope's `contentEncoding` is set (Kubernetes never sets it).
    #[error("the envelope's contentEncoding {0:?} is not supported")]
    Encoding(String),
    /// The wire format is broken at `path`.
    #[error("malformed protobuf at {path}: {why}")]
    Malformed {
        /// Where, as a JSON path (`spec.template.spec.containers[0]`).
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// A field's value type.
#[derive(Debug)]
enum Type {
    String,
    Int32,
    Int64,
    Bool,
    Double,
    Bytes,
    Message(&'static str),
    /// A map from strings to this.
    Map(Box<Type>),
}

#[derive(Debug)]
struct Field {
    json: &'static str,
    ty: Type,
    repeated: bool,
}

struct Schema {
    messages: HashMap<&'static str, HashMap<u32, Field>>,
    /// (apiVersion, kind) → message.
    kinds: HashMap<(&'static str, &'static str), &'static str>,
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| parse_schema(include_str!("proto/schema.txt")));

fn parse_type(s: &'static str) -> Type {
    match s {
        "string" => Type::String,
        "int32" => Type::Int32,
        "int64" => Type::Int64,
        "bool" => Type::Bool,
        "double" => Type::Double,
        "bytes" => Type::Bytes,
        other => match other.strip_prefix("map:") {
            Some(v) => Type::Map(Box::new(parse_type(v))),
            None => Type::Message(other),
        },
    }
}

/// Reads the generated table; a line it does not understand is skipped
/// (the unit tests check the table decodes what k8s-pb encodes).
fn parse_schema(text: &'static str) -> Schema {
    let mut messages: HashMap<&'static str, HashMap<u32, Field>> = HashMap::new();
    let mut kinds = HashMap::new();
    let mut current: Option<&'static str> = None;
    for line in text.lines() {
        let mut parts = line.split(' ');
        match parts.next() {
            Some("M") => {
                if let Some(name) = parts.next() {
                    messages.entry(name).or_default();
                    current = Some(name);
                }
            }
            Some("F") => {
                let (Some(msg), Some(tag), Some(json), Some(ty)) = (
                    current,
                    parts.next().and_then(|t| t.parse().ok()),
                    parts.next(),
                    parts.next(),
                ) else {
                    continue;
                };
                let repeated = parts.next() == Some("*");
                messages.entry(msg).or_default().insert(
                    tag,
                    Field {
                        json,
                        ty: parse_type(ty),
                        repeated,
                    },
                );
            }
            Some("R") => {
                if let (Some(av), Some(kind), Some(msg)) =
                    (parts.next(), parts.next(), parts.next())
                {
                    kinds.insert((av, kind), msg);
                }
            }
            _ => {}
        }
    }
    Schema { messages, kinds }
}

/// Decodes a protobuf request body (magic + envelope + object) into the
/// object's JSON, `apiVersion` and `kind` included.
pub fn decode(bytes: &[u8]) -> Result<Value, ProtoError> {
    let Some(body) = bytes.strip_prefix(MAGIC) else {
        return Err(ProtoError::NoMagic);
    };
    let envelope = Envelope::read(body)?;
    if !envelope.content_encoding.is_empty() {
        return Err(ProtoError::Encoding(envelope.content_encoding));
    }
    let schema = &*SCHEMA;
    let Some(message) = schema
        .kinds
        .get(&(envelope.api_version.as_str(), envelope.kind.as_str()))
    else {
        return Err(ProtoError::UnknownKind {
            api_version: envelope.api_version,
            kind: envelope.kind,
        });
    };
    let mut obj = match decode_message(schema, envelope.raw, message, &mut Path::default())? {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    // apiVersion and kind first, as Kubernetes writes them.
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(envelope.api_version));
    out.insert("kind".into(), Value::String(envelope.kind));
    out.append(&mut obj);
    Ok(Value::Object(out))
}

/// `runtime.Unknown`.
#[derive(Default)]
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
}

impl<'a> Envelope<'a> {
    fn read(buf: &'a [u8]) -> Result<Self, ProtoError> {
        let mut env = Envelope::default();
        let mut path = Path::default();
        path.push_field("(envelope)");
        let mut r = Reader { buf, pos: 0 };
        while let Some((tag, wire)) = r.key(&path)? {
            match (tag, wire) {
                (1, 2) => {
                    let meta = r.len_delimited(&path)?;
                    let mut m = Reader { buf: meta, pos: 0 };
                    while let Some((t, w)) = m.key(&path)? {
                        match (t, w) {
                            (1, 2) => env.api_version = m.string(&path)?,
                            (2, 2) => env.kind = m.string(&path)?,
                            _ => m.skip(w, &path)?,
                        }
                    }
                }
                (2, 2) => env.raw = r.len_delimited(&path)?,
                (3, 2) => env.content_encoding = r.string(&path)?,
                _ => r.skip(wire, &path)?,
            }
        }
        Ok(env)
    }
}

/// Where the decoder is, for error messages.
#[derive(Default)]
struct Path(Vec<String>);

impl Path {
    fn push_field(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn show(&self) -> String {
        let mut out = String::new();
        for p in &self.0 {
            if !out.is_empty() && !p.starts_with('[') {
                out.push('.');
            }
            out.push_str(p);
        }
        if out.is_empty() {
            out.push_str("(object)");
        }
        out
    }
    fn error(&self, why: impl Into<String>) -> ProtoError {
        ProtoError::Malformed {
            path: self.show(),
            why: why.into(),
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self, path: &Path) -> Result<u64, ProtoError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(path.error("truncated varint"));
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(path.error("varint longer than 64 bits"));
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(path.error("varint longer than 10 bytes"))
    }

    /// The next field's (number, wire type), or None at the end.
    fn key(&mut self, path: &Path) -> Result<Option<(u32, u8)>, ProtoError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint(path)?;
        let tag = u32::try_from(key >> 3).map_err(|_| path.error("field number out of range"))?;
        if tag == 0 {
            return Err(path.error("field number 0"));
        }
        Ok(Some((tag, (key & 7) as u8)))
    }

    fn take(&mut self, n: usize, path: &Path) -> Result<&'a [u8], ProtoError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| path.error(format!("{n} bytes announced, fewer left")))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn len_delimited(&mut self, path: &Path) -> Result<&'a [u8], ProtoError> {
        let n = self.varint(path)?;
        let n = usize::try_from(n).map_err(|_| path.error("length out of range"))?;
        self.take(n, path)
    }

    fn string(&mut self, path: &Path) -> Result<String, ProtoError> {
        let bytes = self.len_delimited(path)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| path.error("string is not UTF-8"))
    }

    fn skip(&mut self, wire: u8, path: &Path) -> Result<(), ProtoError> {
        match wire {
            0 => self.varint(path).map(drop),
            1 => self.take(8, path).map(drop),
            2 => self.len_delimited(path).map(drop),
            5 => self.take(4, path).map(drop),
            other => Err(path.error(format!("unsupported wire type {other}"))),
        }
    }
}

fn decode_message(
    schema: &Schema,
    buf: &[u8],
    name: &str,
    path: &mut Path,
) -> Result<Value, ProtoError> {
    if path.0.len() > MAX_DEPTH {
        return Err(path.error(format!("nested deeper than {MAX_DEPTH}")));
    }
    if let Some(v) = well_known(buf, name, path)? {
        return Ok(v);
    }
    let Some(fields) = schema.messages.get(name) else {
        return Err(path.error(format!("no schema for message {name}")));
    };
    let mut out = Map::new();
    let mut r = Reader { buf, pos: 0 };
    while let Some((tag, wire)) = r.key(path)? {
        let Some(field) = fields.get(&tag) else {
            // Unknown fields are skipped, as Go's generated code does.
            r.skip(wire, path)?;
            continue;
        };
        path.push_field(field.json);
        let result = read_field(schema, &mut r, wire, field, &mut out, path);
        path.0.pop();
        result?;
    }
    Ok(Value::Object(out))
}

fn read_field(
    schema: &Schema,
    r: &mut Reader<'_>,
    wire: u8,
    field: &Field,
    out: &mut Map<String, Value>,
    path: &mut Path,
) -> Result<(), ProtoError> {
    if let Type::Map(value_ty) = &field.ty {
        let entry = expect_len(r, wire, path)?;
        let (key, value) = map_entry(schema, entry, value_ty, path)?;
        let map = out
            .entry(field.json)
            .or_insert_with(|| Value::Object(Map::new()));
        if let (Value::Object(map), Some(value)) = (map, value) {
            map.insert(key, value);
        }
        return Ok(());
    }
    if field.repeated {
        let list = out
            .entry(field.json)
            .or_insert_with(|| Value::Array(Vec::new()));
        let Value::Array(list) = list else {
            return Ok(());
        };
        // Packed numbers: one length-delimited run of varints.
        if wire == 2 && matches!(field.ty, Type::Int32 | Type::Int64 | Type::Bool) {
            let run = r.len_delimited(path)?;
            let mut inner = Reader { buf: run, pos: 0 };
            while inner.pos < run.len() {
                list.push(scalar_varint(&field.ty, inner.varint(path)?));
            }
            return Ok(());
        }
        let index = list.len();
        path.0.push(format!("[{index}]"));
        let value = read_value(schema, r, wire, &field.ty, path);
        path.0.pop();
        // A repeated string keeps its empty items: their position counts.
        list.push(value?.unwrap_or_else(|| match field.ty {
            Type::String => Value::String(String::new()),
            _ => Value::Null,
        }));
        return Ok(());
    }
    if field.json == INLINE {
        // An embedded Go struct: its fields are the parent's.
        path.0.pop();
        let value = read_value(schema, r, wire, &field.ty, path);
        path.push_field(INLINE);
        if let Some(Value::Object(mut inner)) = value? {
            out.append(&mut inner);
        }
        return Ok(());
    }
    match read_value(schema, r, wire, &field.ty, path)? {
        Some(value) => {
            out.insert(field.json.to_string(), value);
        }
        None => {
            out.remove(field.json);
        }
    }
    Ok(())
}

fn expect_len<'a>(r: &mut Reader<'a>, wire: u8, path: &Path) -> Result<&'a [u8], ProtoError> {
    if wire != 2 {
        return Err(path.error(format!(
            "wire type {wire} where a length-delimited field belongs"
        )));
    }
    r.len_delimited(path)
}

/// One map entry: key (field 1, string) and value (field 2).
fn map_entry(
    schema: &Schema,
    buf: &[u8],
    value_ty: &Type,
    path: &mut Path,
) -> Result<(String, Option<Value>), ProtoError> {
    let mut key = String::new();
    let mut value = None;
    let mut r = Reader { buf, pos: 0 };
    while let Some((tag, wire)) = r.key(path)? {
        match tag {
            1 => key = expect_len(&mut r, wire, path).and_then(|b| utf8(b, path))?,
            2 => {
                path.0.push(format!("[{key:?}]"));
                let v = read_value(schema, &mut r, wire, value_ty, path);
                path.0.pop();
                value = v?;
            }
            _ => r.skip(wire, path)?,
        }
    }
    // A map keeps its empty strings ("key=" is a value); absent is "".
    let value = value.or(match value_ty {
        Type::String | Type::Bytes => Some(Value::String(String::new())),
        Type::Message(_) => Some(Value::Object(Map::new())),
        _ => None,
    });
    Ok((key, value))
}

fn utf8(bytes: &[u8], path: &Path) -> Result<String, ProtoError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| path.error("string is not UTF-8"))
}

fn scalar_varint(ty: &Type, v: u64) -> Value {
    match ty {
        Type::Bool => Value::Bool(v != 0),
        // int32 and int64 are two's complement on the wire.
        Type::Int32 => Value::from(v as i64 as i32),
        _ => Value::from(v as i64),
    }
}

/// A value of type `ty`; None when it is the empty string.
fn read_value(
    schema: &Schema,
    r: &mut Reader<'_>,
    wire: u8,
    ty: &Type,
    path: &mut Path,
) -> Result<Option<Value>, ProtoError> {
    Ok(match ty {
        Type::String => {
            let s = expect_len(r, wire, path).and_then(|b| utf8(b, path))?;
            (!s.is_empty()).then_some(Value::String(s))
        }
        Type::Bytes => {
            let b = expect_len(r, wire, path)?;
            Some(Value::String(
                base64::engine::general_purpose::STANDARD.encode(b),
            ))
        }
        Type::Int32 | Type::Int64 | Type::Bool => {
            if wire != 0 {
                return Err(path.error(format!("wire type {wire} where a varint belongs")));
            }
            Some(scalar_varint(ty, r.varint(path)?))
        }
        Type::Double => {
            if wire != 1 {
                return Err(path.error(format!("wire type {wire} where a double belongs")));
            }
            let b = r.take(8, path)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            let f = f64::from_le_bytes(a);
            Some(serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number))
        }
        Type::Message(name) => {
            let b = expect_len(r, wire, path)?;
            let v = decode_message(schema, b, name, path)?;
            (!v.is_null()).then_some(v)
        }
        Type::Map(_) => return Err(path.error("a map inside a map")),
    })
}

const META: &str = "apimachinery.pkg.apis.meta.v1.";

/// One field of a small well-known message, undecoded.
struct RawField<'a> {
    tag: u32,
    wire: u8,
    varint: u64,
    bytes: &'a [u8],
}

fn raw_fields<'a>(buf: &'a [u8], path: &Path) -> Result<Vec<RawField<'a>>, ProtoError> {
    let mut out = Vec::new();
    let mut r = Reader { buf, pos: 0 };
    while let Some((tag, wire)) = r.key(path)? {
        let (varint, bytes) = match wire {
            0 => (r.varint(path)?, &[][..]),
            2 => (0, r.len_delimited(path)?),
            other => {
                r.skip(other, path)?;
                continue;
            }
        };
        out.push(RawField {
            tag,
            wire,
            varint,
            bytes,
        });
    }
    Ok(out)
}

/// The first field `tag` of wire type `wire`.
fn first<'a, 'b>(fields: &'b [RawField<'a>], tag: u32, wire: u8) -> Option<&'b RawField<'a>> {
    fields.iter().find(|f| f.tag == tag && f.wire == wire)
}

/// The types whose JSON is not their fields: Time, MicroTime, Duration,
/// Quantity, IntOrString, RawExtension, FieldsV1. `Null` means absent.
fn well_known(buf: &[u8], name: &str, path: &mut Path) -> Result<Option<Value>, ProtoError> {
    let fields = |path: &Path| raw_fields(buf, path);
    let local = name.strip_prefix(META);
    Ok(Some(match (local, name) {
        (Some("Time" | "MicroTime"), _) => {
            let f = fields(path)?;
            let secs = first(&f, 1, 0).map_or(0, |f| f.varint as i64);
            let nanos = first(&f, 2, 0).map_or(0, |f| f.varint as i64 as i32);
            if secs == 0 && nanos == 0 {
                return Ok(Some(Value::Null));
            }
            Value::String(rfc3339(secs, nanos, local == Some("MicroTime"), path)?)
        }
        (Some("Duration"), _) => {
            let f = fields(path)?;
            let ns = first(&f, 1, 0).map_or(0, |f| f.varint as i64);
            Value::String(go_duration(ns))
        }
        (Some("FieldsV1"), _) | (_, "apimachinery.pkg.runtime.RawExtension") => {
            let f = fields(path)?;
            let raw = first(&f, 1, 2).map_or(&[][..], |f| f.bytes);
            if raw.is_empty() {
                return Ok(Some(Value::Null));
            }
            // RawExtension may hold a protobuf object itself.
            if raw.starts_with(MAGIC) {
                decode(raw)?
            } else {
                serde_json::from_slice(raw)
                    .map_err(|e| path.error(format!("embedded object is not JSON: {e}")))?
            }
        }
        (
            _,
            "apimachinery.pkg.api.resource.Quantity"
            | "apimachinery.pkg.api.resource.QuantityValue",
        ) => {
            let f = fields(path)?;
            let s = first(&f, 1, 2).map_or(Ok(String::new()), |f| utf8(f.bytes, path))?;
            if s.is_empty() {
                return Ok(Some(Value::Null));
            }
            Value::String(s)
        }
        (_, "apimachinery.pkg.util.intstr.IntOrString") => {
            let f = fields(path)?;
            if first(&f, 1, 0).is_some_and(|t| t.varint == 1) {
                Value::String(first(&f, 3, 2).map_or(Ok(String::new()), |s| utf8(s.bytes, path))?)
            } else {
                Value::from(first(&f, 2, 0).map_or(0, |i| i64::from(i.varint as i64 as i32)))
            }
        }
        _ => return Ok(None),
    }))
}

/// RFC 3339 in UTC, as metav1.Time (seconds) or MicroTime (microseconds)
/// marshal to JSON.
fn rfc3339(secs: i64, nanos: i32, micro: bool, path: &Path) -> Result<String, ProtoError> {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return Err(path.error(format!("time {secs}s is outside years 0-9999")));
    }
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let mut out = format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}");
    if micro {
        out.push_str(&format!(".{:06}", nanos.clamp(0, 999_999_999) / 1000));
    }
    out.push('Z');
    Ok(out)
}

/// Howard Hinnant's days → (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A duration as Go's `time.Duration.String()` writes it (`1h2m3.5s`).
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let ns = ns.unsigned_abs();
    if ns < 1_000_000_000 {
        let (unit, div) = if ns < 1_000 {
            ("ns", 1)
        } else if ns < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", trim_fraction(ns, div));
    }
    let (h, rest) = (ns / 3_600_000_000_000, ns % 3_600_000_000_000);
    let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let mut out = sign.to_string();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{}s", trim_fraction(rest, 1_000_000_000)));
    out
}

fn trim_fraction(v: u64, div: u64) -> String {
    let whole = v / div;
    let frac = v % div;
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests;

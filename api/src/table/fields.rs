//! Reading objects the way Kubernetes' printers do: a missing or mistyped
//! field reads as Go's zero value (`""`, `0`, empty list), never as an
//! error, because objects come from users and a listing must not fail on one.
//! Also the formatting helpers the printers share: ages, label selectors,
//! container lists.

use serde_json::{Map, Value};

/// The string at a JSON pointer, or `""`.
pub(super) fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The string at a JSON pointer, if the field is set at all: Go's `*string`.
pub(super) fn opt_str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// The integer at a JSON pointer, if set.
pub(super) fn opt_i64_at(v: &Value, pointer: &str) -> Option<i64> {
    let field = v.pointer(pointer)?;
    field
        .as_i64()
        .or_else(|| field.as_u64().map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
}

/// The integer at a JSON pointer, or 0.
pub(super) fn i64_at(v: &Value, pointer: &str) -> i64 {
    opt_i64_at(v, pointer).unwrap_or(0)
}

/// The boolean at a JSON pointer, if set.
pub(super) fn opt_bool_at(v: &Value, pointer: &str) -> Option<bool> {
    v.pointer(pointer).and_then(Value::as_bool)
}

/// The boolean at a JSON pointer, or false.
pub(super) fn bool_at(v: &Value, pointer: &str) -> bool {
    opt_bool_at(v, pointer).unwrap_or(false)
}

/// The list at a JSON pointer, or an empty one.
pub(super) fn arr_at<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The map at a JSON pointer, if it is one.
pub(super) fn map_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a Map<String, Value>> {
    v.pointer(pointer).and_then(Value::as_object)
}

/// Whether a Go pointer-to-struct field is set: present and not `null`.
pub(super) fn is_set(v: &Value, pointer: &str) -> bool {
    v.pointer(pointer).is_some_and(|f| !f.is_null())
}

/// Number of entries of a map or list field (`len()` in Go), 0 if absent.
pub(super) fn len_at(v: &Value, pointer: &str) -> usize {
    match v.pointer(pointer) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

/// A `resource.Quantity` or `IntOrString` as text: JSON carries either a
/// string or a number.
pub(super) fn scalar_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A count as a table cell; Kubernetes sends `int64` cells as JSON numbers.
pub(super) fn int_cell(n: usize) -> Value {
    Value::from(u64::try_from(n).unwrap_or(u64::MAX))
}

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// Nanoseconds since the Unix epoch of an RFC 3339 timestamp, as
/// `metav1.Time` and `metav1.MicroTime` are written; `None` when it does not
/// parse, which the printers treat like Go's zero time.
pub(super) fn parse_time(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |acc, d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // Leap seconds (":60") are accepted as Go does.
    if second > 60 {
        return None;
    }

    let mut at = 19;
    let mut nanos: i128 = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let frac = b.get(start..at)?;
        if frac.is_empty() {
            return None;
        }
        let mut scale = NANOS_PER_SECOND;
        for d in frac.iter().take(9) {
            scale /= 10;
            nanos += i128::from(d - b'0') * scale;
        }
    }

    let offset_seconds = match b.get(at) {
        Some(b'Z' | b'z') if b.len() == at + 1 => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == at + 6 && sep(at + 3, b":") => {
            let (oh, om) = (num(at + 1, 2)?, num(at + 4, 2)?);
            let off = oh * 3600 + om * 60;
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };

    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(i128::from(seconds) * NANOS_PER_SECOND + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm, exact over the whole `i64` year range we can parse).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A timestamp in Go's `time.RFC3339` layout in UTC, seconds precision;
/// `None` is Go's zero time, `0001-01-01T00:00:00Z`.
pub(super) fn format_rfc3339(nanos: Option<i128>) -> String {
    let Some(nanos) = nanos else {
        return "0001-01-01T00:00:00Z".to_string();
    };
    let seconds = i64::try_from(nanos.div_euclid(NANOS_PER_SECOND)).unwrap_or(0);
    let (days, secs) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Kubernetes' `duration.HumanDuration`: two or three significant figures,
/// coarser as the duration grows (`45s`, `5m3s`, `3h10m`, `2d4h`, `400d`).
pub(super) fn human_duration(nanos: i128) -> String {
    // Go truncates toward zero, as Rust's integer division does.
    let seconds = nanos / NANOS_PER_SECOND;
    // A clock up to two seconds ahead of ours still reads as "now".
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        let d = hours / 24;
        return if h == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{h}h")
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    let years = hours / 24 / 365;
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{dy}d")
        };
    }
    format!("{years}y")
}

/// `labels.FormatLabels`: `k=v` pairs sorted by key, or `<none>`.
pub(super) fn format_labels(labels: Option<&Map<String, Value>>) -> String {
    let mut pairs: Vec<(&str, &str)> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("")))
        .collect();
    if pairs.is_empty() {
        return "<none>".to_string();
    }
    pairs.sort_unstable();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A `metav1.LabelSelector` that `LabelSelectorAsSelector` would reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BadSelector;

/// `metav1.LabelSelectorAsSelector(sel).String()`: requirements sorted by
/// key, `k=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`; empty for a missing
/// or empty selector.
pub(super) fn selector_string(selector: Option<&Value>) -> Result<String, BadSelector> {
    let Some(selector) = selector.filter(|s| !s.is_null()) else {
        return Ok(String::new());
    };
    let mut requirements: Vec<(String, String)> = Vec::new();
    for (key, value) in map_at(selector, "/matchLabels").into_iter().flatten() {
        let value = value.as_str().unwrap_or("");
        requirements.push((key.clone(), format!("{key}={value}")));
    }
    for expr in arr_at(selector, "/matchExpressions") {
        let key = str_at(expr, "/key");
        let mut values: Vec<&str> = arr_at(expr, "/values")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        let text = match str_at(expr, "/operator") {
            "In" | "NotIn" if values.is_empty() => return Err(BadSelector),
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" | "DoesNotExist" if !values.is_empty() => return Err(BadSelector),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => return Err(BadSelector),
        };
        requirements.push((key.to_string(), text));
    }
    // Go sorts by key only; a stable sort keeps equal keys in input order.
    requirements.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(requirements
        .into_iter()
        .map(|(_, text)| text)
        .collect::<Vec<_>>()
        .join(","))
}

/// `metav1.FormatLabelSelector`: the selector, `<none>` when it selects
/// everything or nothing, `<error>` when it is malformed.
pub(super) fn format_label_selector(selector: Option<&Value>) -> String {
    match selector_string(selector) {
        Ok(s) if s.is_empty() => "<none>".to_string(),
        Ok(s) => s,
        Err(BadSelector) => "<error>".to_string(),
    }
}

/// The CONTAINERS and IMAGES cells: names and images joined with commas.
pub(super) fn container_cells(containers: &[Value]) -> (Value, Value) {
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, "/image")).collect();
    (Value::from(names.join(",")), Value::from(images.join(",")))
}

/// Kubernetes' `listWithMoreString`: the shown items, then ` + N more...`
/// when `count` exceeded `max`, or `<unset>` when there is nothing.
pub(super) fn list_with_more(list: &[String], more: bool, count: usize, max: usize) -> String {
    let joined = list.join(",");
    if more {
        return format!("{joined} + {} more...", count.saturating_sub(max));
    }
    if joined.is_empty() {
        return "<unset>".to_string();
    }
    joined
}

/// The first condition of `type_` in a `status.conditions` list.
pub(super) fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    arr_at(obj, "/status/conditions")
        .iter()
        .find(|c| str_at(c, "/type") == type_)
}

/// Whether the first condition of `type_` has status `True`.
pub(super) fn condition_true(obj: &Value, type_: &str) -> bool {
    condition(obj, type_).is_some_and(|c| str_at(c, "/status") == "True")
}

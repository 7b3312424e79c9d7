//! Cron schedules as Kubernetes reads them (robfig/cron's standard
//! parser): five fields — minute, hour, day of month, month, day of week —
//! with `*`, `?`, lists, ranges, steps and month/day names, or a
//! descriptor (`@hourly`, `@daily`/`@midnight`, `@weekly`, `@monthly`,
//! `@yearly`/`@annually`) or `@every <duration>`, optionally after
//! `TZ=<zone>`. When both day
//! fields are restricted a day matching either runs (cron's OR); when one
//! of them is `*` both must match.

use jiff::{
    SignedDuration, Timestamp,
    civil::{Date, DateTime},
    tz::TimeZone,
};

/// The flag on a field written `*` or `?` (no step): the day fields then
/// combine with AND.
const STAR: u64 = 1 << 63;
/// How far a search for the next or previous time goes (robfig's limit).
const YEARS: i16 = 5;

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// The zone a `TZ=` prefix names.
    pub zone: Option<String>,
    /// `@every`'s interval (whole seconds, at least one): times are counted
    /// from the last run instead of read off the clock.
    every: Option<SignedDuration>,
}

/// The scheduled times between a CronJob's last run and now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// The most recent time due, if any.
    pub last: Option<Timestamp>,
    /// How many times were due (counting stops past the cap asked for).
    pub missed: usize,
    /// The first time after now.
    pub next: Option<Timestamp>,
}

/// Go's `time.ParseDuration` (what `@every` takes).
fn go_duration(s: &str) -> Result<SignedDuration, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(SignedDuration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        let n: f64 = num.parse().map_err(|_| invalid())?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            u => return Err(format!("time: unknown unit {u:?} in duration {s:?}")),
        };
        total += n * scale;
        rest = next;
    }
    SignedDuration::try_from_secs_f64(total).map_err(|_| invalid())
}

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DAYS: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const WEEKDAYS: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

fn bits(min: u32, max: u32, step: u32) -> u64 {
    (min..=max)
        .step_by(usize::try_from(step).unwrap_or(1))
        .fold(0, |b, i| b | 1 << i)
}

fn all(b: &Bounds) -> u64 {
    bits(b.min, b.max, 1) | STAR
}

fn number(expr: &str, b: &Bounds) -> Result<u32, String> {
    let lower = expr.to_ascii_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        return Ok(b.min + u32::try_from(i).unwrap_or(0));
    }
    expr.parse()
        .map_err(|_| format!("failed to parse int from {expr}"))
}

fn range(expr: &str, b: &Bounds) -> Result<u64, String> {
    let (range, step) = match expr.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (expr, None),
    };
    let (start, mut end, mut extra) = if range == "*" || range == "?" {
        (b.min, b.max, STAR)
    } else {
        match range.split_once('-') {
            Some((lo, hi)) => (number(lo, b)?, number(hi, b)?, 0),
            None => {
                let n = number(range, b)?;
                (n, n, 0)
            }
        }
    };
    let step = match step {
        Some(s) => {
            let s: u32 = s
                .parse()
                .map_err(|_| format!("failed to parse int from {s}"))?;
            // "N/step" means "N-max/step".
            if !range.contains('-') && range != "*" && range != "?" {
                end = b.max;
            }
            if s > 1 {
                extra = 0;
            }
            s
        }
        None => 1,
    };
    if start < b.min || end > b.max || start > end || step == 0 {
        return Err(format!("{expr} is out of range {}-{}", b.min, b.max));
    }
    Ok(bits(start, end, step) | extra)
}

fn field(expr: &str, b: &Bounds) -> Result<u64, String> {
    expr.split(',')
        .filter(|e| !e.is_empty())
        .try_fold(0, |acc, e| Ok(acc | range(e, b)?))
}

impl Schedule {
    /// Parses a CronJob's `spec.schedule`; the error says what is wrong.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut spec = spec.trim();
        let mut zone = None;
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            let (tz, rest) = spec.split_once(' ').unwrap_or((spec, ""));
            zone = tz.split_once('=').map(|(_, z)| z.to_string());
            spec = rest.trim();
        }
        let (min, hour, day) = (1u64, 1u64, 1u64 << 1);
        let parsed = match spec {
            "@yearly" | "@annually" => (min, hour, day, 1 << 1, all(&WEEKDAYS)),
            "@monthly" => (min, hour, day, all(&MONTHS), all(&WEEKDAYS)),
            "@weekly" => (min, hour, all(&DAYS), all(&MONTHS), 1),
            "@daily" | "@midnight" => (min, hour, all(&DAYS), all(&MONTHS), all(&WEEKDAYS)),
            "@hourly" => (min, all(&HOURS), all(&DAYS), all(&MONTHS), all(&WEEKDAYS)),
            s if s.starts_with("@every ") => {
                let d = go_duration(s.trim_start_matches("@every "))
                    .map_err(|e| format!("failed to parse duration {s}: {e}"))?;
                // Whole seconds, at least one, as robfig/cron rounds it.
                let secs = d.as_secs().max(1);
                return Ok(Self {
                    minute: 0,
                    hour: 0,
                    dom: 0,
                    month: 0,
                    dow: 0,
                    zone,
                    every: Some(SignedDuration::from_secs(secs)),
                });
            }
            s if s.starts_with('@') => {
                return Err(format!(
                    "unsupported descriptor {s}: use five fields or @hourly, @daily, @weekly, @monthly, @yearly"
                ));
            }
            s => {
                let f: Vec<&str> = s.split_whitespace().collect();
                let [m, h, dom, mon, dow] = f.as_slice() else {
                    return Err(format!("expected exactly 5 fields, found {}: {s}", f.len()));
                };
                (
                    field(m, &MINUTES)?,
                    field(h, &HOURS)?,
                    field(dom, &DAYS)?,
                    field(mon, &MONTHS)?,
                    field(dow, &WEEKDAYS)?,
                )
            }
        };
        let (minute, hour, dom, month, dow) = parsed;
        Ok(Self {
            minute,
            hour,
            dom,
            month,
            dow,
            zone,
            every: None,
        })
    }

    /// The times due after `earliest` (the last run, or the creation) up
    /// to `now`, counting at most `cap` + 1 of them, and the next one.
    pub fn due(&self, earliest: Timestamp, now: Timestamp, tz: &TimeZone, cap: usize) -> Due {
        if let Some(every) = self.every {
            let anchor = Timestamp::from_second(earliest.as_second()).unwrap_or(earliest);
            let steps = now.duration_since(anchor).as_secs() / every.as_secs();
            let at = |k: i64| {
                anchor
                    .checked_add(every * i32::try_from(k).unwrap_or(i32::MAX))
                    .ok()
            };
            return Due {
                last: (steps >= 1).then(|| at(steps)).flatten(),
                missed: usize::try_from(steps.max(0)).unwrap_or(usize::MAX),
                next: at(steps.max(0) + 1),
            };
        }
        let mut missed = 0;
        let mut t = earliest;
        while let Some(next) = self.next_after(t, tz).filter(|n| *n <= now) {
            missed += 1;
            if missed > cap {
                break;
            }
            t = next;
        }
        Due {
            last: self.last_at_or_before(now, tz).filter(|t| *t > earliest),
            missed,
            next: self.next_after(now, tz),
        }
    }

    fn day_matches(&self, d: Date) -> bool {
        if self.month & 1 << d.month() == 0 {
            return false;
        }
        let dom = self.dom & 1 << d.day() != 0;
        let dow = self.dow & 1 << d.weekday().to_sunday_zero_offset() != 0;
        if self.dom & STAR != 0 || self.dow & STAR != 0 {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The (hour, minute) pairs of a matching day, ascending.
    fn times(&self) -> impl DoubleEndedIterator<Item = (i8, i8)> + '_ {
        (0i8..24)
            .filter(|h| self.hour & 1 << h != 0)
            .flat_map(move |h| {
                (0i8..60)
                    .filter(|m| self.minute & 1 << m != 0)
                    .map(move |m| (h, m))
            })
    }

    fn at(d: Date, (h, m): (i8, i8), tz: &TimeZone) -> Option<Timestamp> {
        let dt = DateTime::from_parts(d, jiff::civil::time(h, m, 0, 0));
        tz.to_ambiguous_timestamp(dt).compatible().ok()
    }

    /// The first scheduled time after `t`, in `tz`.
    pub fn next_after(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = t.to_zoned(tz.clone()).date();
        let mut d = start.yesterday().ok()?;
        let end = start.checked_add(jiff::Span::new().years(YEARS)).ok()?;
        while d <= end {
            if self.day_matches(d) {
                let hit = self
                    .times()
                    .filter_map(|hm| Self::at(d, hm, tz))
                    .find(|ts| *ts > t);
                if hit.is_some() {
                    return hit;
                }
            }
            d = d.tomorrow().ok()?;
        }
        None
    }

    /// The last scheduled time at or before `t`, in `tz`.
    pub fn last_at_or_before(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = t.to_zoned(tz.clone()).date();
        let mut d = start.tomorrow().ok()?;
        let end = start.checked_sub(jiff::Span::new().years(YEARS)).ok()?;
        while d >= end {
            if self.day_matches(d) {
                let hit = self
                    .times()
                    .rev()
                    .filter_map(|hm| Self::at(d, hm, tz))
                    .find(|ts| *ts <= t);
                if hit.is_some() {
                    return hit;
                }
            }
            d = d.yesterday().ok()?;
        }
        None
    }
}

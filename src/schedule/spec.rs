//! When a job runs: once at an instant, every N milliseconds from an anchor, or on a cron
//! expression read in the job's IANA time zone (so `every day at 9:00` stays at 9:00 across
//! daylight-saving changes). Stored as JSON in the job's `spec` column.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::storage::store::UnixMs;

/// How a job repeats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Spec {
    /// Once, at `at`.
    Once { at: UnixMs },
    /// At `anchor`, then every `every_ms` milliseconds after it.
    Every { every_ms: i64, anchor: UnixMs },
    /// A five-field cron expression (minute hour day-of-month month day-of-week) in the job's
    /// time zone.
    Cron { expr: String },
}

/// Why a spec cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("`{0}` is not a cron expression I can read: {1}")]
    Cron(String, String),
    #[error(
        "a cron expression has 5 fields (minute hour day-of-month month day-of-week); `{expr}` has {fields}"
    )]
    CronFields { expr: String, fields: usize },
    #[error("`{0}` is not a time zone I know (use an IANA name such as Europe/Berlin)")]
    TimeZone(String),
    #[error("the time is out of range")]
    OutOfRange,
    #[error("the stored schedule is unreadable: {0}")]
    Unreadable(String),
}

/// The time zone an IANA name (or `UTC`) names.
pub fn time_zone(name: &str) -> Result<TimeZone, SpecError> {
    TimeZone::get(name.trim()).map_err(|_| SpecError::TimeZone(name.to_string()))
}

/// Parse a five-field cron expression.
pub fn parse_cron(expr: &str) -> Result<Cron, SpecError> {
    let fields = expr.split_whitespace().count();
    if fields != 5 {
        return Err(SpecError::CronFields {
            expr: expr.to_string(),
            fields,
        });
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| SpecError::Cron(expr.to_string(), e.to_string()))
}

fn zoned(at: UnixMs, tz: &TimeZone) -> Result<jiff::Zoned, SpecError> {
    Ok(Timestamp::from_millisecond(at.0)
        .map_err(|_| SpecError::OutOfRange)?
        .to_zoned(tz.clone()))
}

fn millis(z: &jiff::Zoned) -> UnixMs {
    UnixMs(z.timestamp().as_millisecond())
}

impl Spec {
    /// Read a stored spec.
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let spec: Spec =
            serde_json::from_str(text).map_err(|e| SpecError::Unreadable(e.to_string()))?;
        if let Spec::Cron { expr } = &spec {
            parse_cron(expr)?;
        }
        Ok(spec)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether it runs more than once.
    pub fn recurring(&self) -> bool {
        !matches!(self, Spec::Once { .. })
    }

    /// The first due time strictly after `t`, or `None` when it never runs again.
    pub fn next_after(&self, t: UnixMs, tz: &TimeZone) -> Result<Option<UnixMs>, SpecError> {
        match self {
            Spec::Once { at } => Ok((*at > t).then_some(*at)),
            Spec::Every { every_ms, anchor } => {
                let every = (*every_ms).max(1);
                if t < *anchor {
                    return Ok(Some(*anchor));
                }
                let steps = (t.0 - anchor.0) / every + 1;
                Ok(Some(UnixMs(
                    anchor
                        .0
                        .checked_add(steps.checked_mul(every).ok_or(SpecError::OutOfRange)?)
                        .ok_or(SpecError::OutOfRange)?,
                )))
            }
            Spec::Cron { expr } => {
                let cron = parse_cron(expr)?;
                let mut from = zoned(t, tz)?;
                // Cron resolves to whole seconds: step past `t` itself when `t` has millis.
                for _ in 0..3 {
                    let next = match cron.find_next_occurrence(&from, false) {
                        Ok(next) => next,
                        Err(croner::errors::CronError::TimeSearchLimitExceeded) => {
                            return Ok(None);
                        }
                        Err(e) => return Err(SpecError::Cron(expr.clone(), e.to_string())),
                    };
                    if millis(&next) > t {
                        return Ok(Some(millis(&next)));
                    }
                    from = next;
                }
                Err(SpecError::OutOfRange)
            }
        }
    }

    /// The latest due time at or before `now`, and no earlier than `from` (the due time the job
    /// is waiting for): a job that missed several runs runs once, for the latest of them.
    pub fn latest_due(&self, from: UnixMs, now: UnixMs, tz: &TimeZone) -> UnixMs {
        if now <= from {
            return from;
        }
        let latest = match self {
            Spec::Once { .. } => from,
            Spec::Every { every_ms, anchor } => {
                let every = (*every_ms).max(1);
                if now < *anchor {
                    from
                } else {
                    UnixMs(anchor.0 + (now.0 - anchor.0) / every * every)
                }
            }
            Spec::Cron { expr } => parse_cron(expr)
                .ok()
                .and_then(|cron| {
                    let now = zoned(now, tz).ok()?;
                    cron.find_previous_occurrence(&now, true).ok()
                })
                .map(|z| millis(&z))
                .unwrap_or(from),
        };
        latest.max(from)
    }

    /// The shortest gap between two of the next `runs` due times after `t` (`None` for a
    /// one-off job): what the minimum interval is checked against.
    pub fn shortest_gap(
        &self,
        t: UnixMs,
        tz: &TimeZone,
        runs: usize,
    ) -> Result<Option<i64>, SpecError> {
        match self {
            Spec::Once { .. } => Ok(None),
            Spec::Every { every_ms, .. } => Ok(Some(*every_ms)),
            Spec::Cron { .. } => {
                let mut shortest: Option<i64> = None;
                let Some(mut previous) = self.next_after(t, tz)? else {
                    return Ok(None);
                };
                for _ in 1..runs {
                    let Some(next) = self.next_after(previous, tz)? else {
                        break;
                    };
                    let gap = next.since(previous);
                    shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
                    previous = next;
                }
                Ok(shortest)
            }
        }
    }
}

/// An instant as the user reads it: `Mon 30 Nov 2026 09:00 CET` (seconds shown when not zero).
pub fn show_instant(at: UnixMs, tz: &TimeZone) -> String {
    match zoned(at, tz) {
        Ok(z) if z.second() == 0 => z.strftime("%a %-d %b %Y %H:%M %Z").to_string(),
        Ok(z) => z.strftime("%a %-d %b %Y %H:%M:%S %Z").to_string(),
        Err(_) => format!("{} ms after the epoch", at.0),
    }
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;

    use super::*;

    fn at(tz: &str, y: i16, mo: i8, d: i8, h: i8, mi: i8) -> UnixMs {
        let z = date(y, mo, d).at(h, mi, 0, 0).in_tz(tz).unwrap();
        millis(&z)
    }

    #[test]
    fn cron_keeps_local_time_across_spring_forward() {
        // Europe/Berlin moves from CET (+1) to CEST (+2) on Sunday 29 March 2026.
        let tz = time_zone("Europe/Berlin").unwrap();
        let spec = Spec::Cron {
            expr: "0 9 * * *".into(),
        };
        let saturday = at("Europe/Berlin", 2026, 3, 28, 9, 0);
        let sunday = spec.next_after(saturday, &tz).unwrap().unwrap();
        assert_eq!(sunday, at("Europe/Berlin", 2026, 3, 29, 9, 0));
        // 23 hours apart in absolute time, 9:00 local on both days.
        assert_eq!(sunday.since(saturday), 23 * 3_600_000);
        assert_eq!(show_instant(sunday, &tz), "Sun 29 Mar 2026 09:00 CEST");
        assert_eq!(show_instant(saturday, &tz), "Sat 28 Mar 2026 09:00 CET");
    }

    #[test]
    fn cron_keeps_local_time_across_fall_back() {
        // America/New_York goes back from EDT (-4) to EST (-5) on Sunday 1 November 2026.
        let tz = time_zone("America/New_York").unwrap();
        let spec = Spec::Cron {
            expr: "30 8 * * 1-5".into(),
        };
        let friday = at("America/New_York", 2026, 10, 30, 8, 30);
        let monday = spec.next_after(friday, &tz).unwrap().unwrap();
        assert_eq!(monday, at("America/New_York", 2026, 11, 2, 8, 30));
        // Friday to Monday is three days and one hour (the hour given back on Sunday).
        assert_eq!(monday.since(friday), (3 * 24 + 1) * 3_600_000);
    }

    #[test]
    fn cron_in_the_skipped_hour_still_runs_that_day() {
        // 02:30 does not exist in Berlin on 29 March 2026; the run is not lost.
        let tz = time_zone("Europe/Berlin").unwrap();
        let spec = Spec::Cron {
            expr: "30 2 * * *".into(),
        };
        let before = at("Europe/Berlin", 2026, 3, 29, 0, 0);
        let next = spec.next_after(before, &tz).unwrap().unwrap();
        let after = at("Europe/Berlin", 2026, 3, 30, 0, 0);
        assert!(next > before && next < after, "{}", show_instant(next, &tz));
    }

    #[test]
    fn every_counts_from_its_anchor() {
        let tz = TimeZone::UTC;
        let spec = Spec::Every {
            every_ms: 7_200_000,
            anchor: UnixMs(1_000),
        };
        assert_eq!(
            spec.next_after(UnixMs(0), &tz).unwrap(),
            Some(UnixMs(1_000))
        );
        assert_eq!(
            spec.next_after(UnixMs(1_000), &tz).unwrap(),
            Some(UnixMs(7_201_000))
        );
        // Down for five hours: one run, for the latest due time.
        let now = UnixMs(1_000 + 5 * 3_600_000);
        assert_eq!(
            spec.latest_due(UnixMs(7_201_000), now, &tz),
            UnixMs(14_401_000)
        );
        assert_eq!(spec.next_after(now, &tz).unwrap(), Some(UnixMs(21_601_000)));
    }

    #[test]
    fn cron_latest_due_is_the_last_missed_run() {
        let tz = time_zone("Europe/Berlin").unwrap();
        let spec = Spec::Cron {
            expr: "0 * * * *".into(),
        };
        let from = at("Europe/Berlin", 2026, 6, 1, 9, 0);
        let now = at("Europe/Berlin", 2026, 6, 1, 12, 20);
        assert_eq!(
            spec.latest_due(from, now, &tz),
            at("Europe/Berlin", 2026, 6, 1, 12, 0)
        );
        // Not due yet: it waits for `from`.
        assert_eq!(spec.latest_due(from, from.plus(-5), &tz), from);
    }

    #[test]
    fn once_runs_once() {
        let spec = Spec::Once { at: UnixMs(50) };
        assert_eq!(
            spec.next_after(UnixMs(10), &TimeZone::UTC).unwrap(),
            Some(UnixMs(50))
        );
        assert_eq!(spec.next_after(UnixMs(50), &TimeZone::UTC).unwrap(), None);
        assert!(!spec.recurring());
    }

    #[test]
    fn cron_fields_are_checked() {
        assert!(matches!(
            parse_cron("0 9 * * 1-5 * 2026"),
            Err(SpecError::CronFields { fields: 7, .. })
        ));
        assert!(matches!(parse_cron("0 25 * * *"), Err(SpecError::Cron(..))));
        assert!(parse_cron("*/15 9-17 * * MON-FRI").is_ok());
    }

    #[test]
    fn shortest_gap_of_a_cron() {
        let spec = Spec::Cron {
            expr: "*/5 * * * *".into(),
        };
        assert_eq!(
            spec.shortest_gap(UnixMs(0), &TimeZone::UTC, 5).unwrap(),
            Some(300_000)
        );
    }

    #[test]
    fn specs_round_trip_as_json() {
        for spec in [
            Spec::Once { at: UnixMs(5) },
            Spec::Every {
                every_ms: 60_000,
                anchor: UnixMs(7),
            },
            Spec::Cron {
                expr: "0 9 * * 1-5".into(),
            },
        ] {
            assert_eq!(Spec::from_json(&spec.to_json()).unwrap(), spec);
        }
        assert!(Spec::from_json("{}").is_err());
    }
}

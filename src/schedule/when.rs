//! Reading when a job runs from what a user typed: `in 10 seconds`, `in 5 minutes`, `at 14:30`,
//! `tomorrow at 9:00`, `on 2026-12-24 18:00`, `every day at 9:00`, `every weekday at 9:00`,
//! `every monday at 9:00`, `every 2 hours`, `cron "0 9 * * 1-5"`, each followed by what to do.
//! Clock times are read in the user's time zone.

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use super::spec::{Spec, SpecError, parse_cron};
use crate::storage::store::UnixMs;

/// The phrases `remind` understands, for help and error replies.
pub const PHRASES: &str = "`in 10 seconds`, `in 5 minutes`, `at 14:30`, `tomorrow at 9:00`, \
`on 2026-12-24 18:00`, `every day at 9:00`, `every weekday at 9:00`, `every monday at 9:00`, \
`every 2 hours`, `cron \"0 9 * * 1-5\"`";

/// A schedule read from text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct When {
    pub spec: Spec,
    /// The first due time.
    pub first: UnixMs,
    /// The schedule as the user wrote it (`every weekday at 9:00`).
    pub description: String,
}

/// Why the text does not say when.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WhenError {
    #[error("say when: {PHRASES}")]
    Missing,
    #[error("I cannot read `{0}` as a time span; say e.g. `in 10 minutes` or `every 2 hours`")]
    Span(String),
    #[error("I cannot read `{0}` as a clock time; say e.g. `14:30`, `9:00` or `9am`")]
    Clock(String),
    #[error("I cannot read `{0}` as a date; write it as YYYY-MM-DD, e.g. `2026-12-24`")]
    Date(String),
    #[error("{0} is in the past; pick a time still to come")]
    Past(String),
    #[error("I cannot tell when `{0}` is; say {PHRASES}")]
    Unknown(String),
    #[error("a cron expression goes in quotes: cron \"0 9 * * 1-5\"")]
    CronQuotes,
    #[error(transparent)]
    Spec(#[from] SpecError),
}

/// Words of the text with where each starts, so the rest can be returned as written.
struct Words<'a> {
    text: &'a str,
    words: Vec<(usize, &'a str)>,
    pos: usize,
}

impl<'a> Words<'a> {
    fn new(text: &'a str) -> Self {
        let mut words = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices() {
            match (c.is_whitespace(), start) {
                (true, Some(s)) => {
                    words.push((s, &text[s..i]));
                    start = None;
                }
                (false, None) => start = Some(i),
                _ => {}
            }
        }
        if let Some(s) = start {
            words.push((s, &text[s..]));
        }
        Self {
            text,
            words,
            pos: 0,
        }
    }

    fn peek(&self) -> Option<String> {
        self.peek_at(0)
    }

    fn peek_at(&self, ahead: usize) -> Option<String> {
        self.words
            .get(self.pos + ahead)
            .map(|(_, w)| w.to_lowercase().trim_end_matches([',', '.']).to_string())
    }

    fn next(&mut self) -> Option<String> {
        let word = self.peek();
        if word.is_some() {
            self.pos += 1;
        }
        word
    }

    fn eat(&mut self, word: &str) -> bool {
        if self.peek().as_deref() == Some(word) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Where the unread text starts.
    fn offset(&self) -> usize {
        self.words
            .get(self.pos)
            .map(|(start, _)| *start)
            .unwrap_or(self.text.len())
    }

    fn rest(&self) -> &'a str {
        self.text[self.offset()..].trim()
    }

    /// The text read so far, from `from`.
    fn read_since(&self, from: usize) -> &'a str {
        self.text[from..self.offset()].trim()
    }
}

/// Read `<when> <what>` at `now` in `tz`: the schedule and the rest of the text (a leading
/// `me` and a `to` after the time are dropped: `me in 5 minutes to stretch`).
pub fn parse(text: &str, now: UnixMs, tz: &TimeZone) -> Result<(When, String), WhenError> {
    let mut words = Words::new(text);
    words.eat("me");
    let start = words.offset();
    let (spec, first) = read_when(&mut words, now, tz)?;
    let description = words.read_since(start).to_string();
    words.eat("to");
    let rest = words.rest().to_string();
    Ok((
        When {
            spec,
            first,
            description,
        },
        rest,
    ))
}

/// Read only a schedule (the model tool's `when`); every word must belong to it.
pub fn parse_only(text: &str, now: UnixMs, tz: &TimeZone) -> Result<When, WhenError> {
    let mut words = Words::new(text);
    let (spec, first) = read_when(&mut words, now, tz)?;
    if !words.rest().is_empty() {
        return Err(WhenError::Unknown(text.trim().to_string()));
    }
    Ok(When {
        spec,
        first,
        description: text.trim().to_string(),
    })
}

fn read_when(words: &mut Words, now: UnixMs, tz: &TimeZone) -> Result<(Spec, UnixMs), WhenError> {
    let Some(first) = words.next() else {
        return Err(WhenError::Missing);
    };
    let today = zoned(now, tz)?.date();
    match first.as_str() {
        "in" => {
            let span = read_span(words)?;
            let at = now.plus(span);
            Ok((Spec::Once { at }, at))
        }
        "at" => {
            let time = read_clock(words)?;
            let mut at = local(today, time, tz)?;
            if at <= now {
                at = local(next_day(today)?, time, tz)?;
            }
            Ok((Spec::Once { at }, at))
        }
        "today" | "tomorrow" => {
            let day = if first == "today" {
                today
            } else {
                next_day(today)?
            };
            words.eat("at");
            let time = read_clock(words)?;
            let at = future(local(day, time, tz)?, now, tz)?;
            Ok((Spec::Once { at }, at))
        }
        "on" => {
            let word = words.next().ok_or(WhenError::Missing)?;
            let day: Date = word.parse().map_err(|_| WhenError::Date(word.clone()))?;
            words.eat("at");
            let time = match words.peek() {
                Some(w) if clock(&w).is_some() => read_clock(words)?,
                _ => Time::constant(9, 0, 0, 0),
            };
            let at = future(local(day, time, tz)?, now, tz)?;
            Ok((Spec::Once { at }, at))
        }
        "every" | "daily" => read_every(words, first == "daily", now, tz),
        "cron" => {
            let expr = read_quoted(words)?;
            parse_cron(&expr)?;
            let spec = Spec::Cron { expr };
            let at = spec.next_after(now, tz)?.ok_or(WhenError::Past(
                "every time that cron expression names".into(),
            ))?;
            Ok((spec, at))
        }
        other => Err(WhenError::Unknown(other.to_string())),
    }
}

/// `every …`: a day pattern at a clock time (a cron expression), or a span.
fn read_every(
    words: &mut Words,
    daily: bool,
    now: UnixMs,
    tz: &TimeZone,
) -> Result<(Spec, UnixMs), WhenError> {
    let days = if daily {
        Some("*".to_string())
    } else {
        match words.peek().as_deref() {
            Some("day") => {
                words.next();
                Some("*".to_string())
            }
            Some("weekday") | Some("weekdays") => {
                words.next();
                Some("1-5".to_string())
            }
            Some(w) if weekday(w).is_some() => {
                let mut list = Vec::new();
                while let Some(day) = words.peek().as_deref().and_then(weekday) {
                    list.push(day.to_sunday_zero_offset().to_string());
                    words.next();
                    words.eat("and");
                }
                Some(list.join(","))
            }
            _ => None,
        }
    };
    let spec = match days {
        Some(days) => {
            words.eat("at");
            let time = read_clock(words)?;
            Spec::Cron {
                expr: format!("{} {} * * {days}", time.minute(), time.hour()),
            }
        }
        None => {
            // `every hour` or `every 2 hours`.
            let span = if words.peek().is_some_and(|w| unit_ms(&w).is_some()) {
                let unit = words.next().unwrap_or_default();
                unit_ms(&unit).ok_or(WhenError::Span(unit))?
            } else {
                read_span(words)?
            };
            Spec::Every {
                every_ms: span,
                anchor: now.plus(span),
            }
        }
    };
    let first = spec
        .next_after(now, tz)?
        .ok_or(WhenError::Unknown("every".into()))?;
    Ok((spec, first))
}

/// A span: `10 seconds`, `an hour`, `1 hour 30 minutes`, `2h`.
fn read_span(words: &mut Words) -> Result<i64, WhenError> {
    let mut total: i64 = 0;
    let mut parts = 0;
    while let Some(word) = words.peek() {
        // `90s`, `2h`: number and unit in one word.
        let (count, unit) = match split_number(&word) {
            Some((n, unit)) if !unit.is_empty() => (n, unit.to_string()),
            Some((n, _)) => match words.peek_at(1) {
                Some(unit) if unit_ms(&unit).is_some() => {
                    words.next();
                    (n, unit)
                }
                _ => return Err(WhenError::Span(word)),
            },
            None if matches!(word.as_str(), "a" | "an" | "one") => match words.peek_at(1) {
                Some(unit) if unit_ms(&unit).is_some() => {
                    words.next();
                    (1, unit)
                }
                _ => break,
            },
            None if parts > 0 && word == "and" => {
                words.next();
                continue;
            }
            None => break,
        };
        let Some(unit_ms) = unit_ms(&unit) else {
            if parts == 0 {
                return Err(WhenError::Span(word));
            }
            break;
        };
        words.next();
        total = count
            .checked_mul(unit_ms)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| WhenError::Span(word.clone()))?;
        parts += 1;
    }
    if parts == 0 {
        return Err(WhenError::Span(words.peek().unwrap_or_default()));
    }
    if total <= 0 {
        return Err(WhenError::Past("a time span of zero".into()));
    }
    Ok(total)
}

/// `90` → (90, ""), `2h` → (2, "h"); `None` when the word does not start with a number.
fn split_number(word: &str) -> Option<(i64, &str)> {
    let digits = word
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(word.len());
    if digits == 0 {
        return None;
    }
    let n = word[..digits].parse().ok()?;
    Some((n, &word[digits..]))
}

/// Milliseconds of a time unit word.
fn unit_ms(word: &str) -> Option<i64> {
    Some(match word {
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        "w" | "week" | "weeks" => 7 * 86_400_000,
        _ => return None,
    })
}

/// Read a clock time: `14:30`, `9`, `9am`, `9:30 pm`, `noon`, `midnight`.
fn read_clock(words: &mut Words) -> Result<Time, WhenError> {
    let word = words.next().ok_or(WhenError::Missing)?;
    let mut time = clock(&word).ok_or_else(|| WhenError::Clock(word.clone()))?;
    if !word.ends_with("am") && !word.ends_with("pm") && word.contains(|c: char| c.is_ascii_digit())
    {
        match words.peek().as_deref() {
            Some("am") | Some("pm") => {
                let suffix = words.next().unwrap_or_default();
                time = clock(&format!("{word}{suffix}"))
                    .ok_or_else(|| WhenError::Clock(format!("{word} {suffix}")))?;
            }
            _ => {}
        }
    }
    Ok(time)
}

/// A clock time in one word.
fn clock(word: &str) -> Option<Time> {
    match word {
        "noon" => return Some(Time::constant(12, 0, 0, 0)),
        "midnight" => return Some(Time::constant(0, 0, 0, 0)),
        _ => {}
    }
    let (digits, meridiem) = if let Some(d) = word.strip_suffix("am") {
        (d, Some(false))
    } else if let Some(d) = word.strip_suffix("pm") {
        (d, Some(true))
    } else {
        (word, None)
    };
    let (hour, minute) = match digits.split_once(':') {
        Some((h, m)) if m.len() == 2 => (h.parse::<i8>().ok()?, m.parse::<i8>().ok()?),
        Some(_) => return None,
        None if !digits.is_empty() && digits.len() <= 2 => (digits.parse::<i8>().ok()?, 0),
        None => return None,
    };
    let hour = match meridiem {
        Some(pm) if (1..=12).contains(&hour) => hour % 12 + if pm { 12 } else { 0 },
        Some(_) => return None,
        None => hour,
    };
    Time::new(hour, minute, 0, 0).ok()
}

fn weekday(word: &str) -> Option<Weekday> {
    let word = word.trim_end_matches('s');
    Some(match word {
        "monday" | "mon" => Weekday::Monday,
        "tuesday" | "tue" => Weekday::Tuesday,
        "wednesday" | "wed" => Weekday::Wednesday,
        "thursday" | "thu" => Weekday::Thursday,
        "friday" | "fri" => Weekday::Friday,
        "saturday" | "sat" => Weekday::Saturday,
        "sunday" | "sun" => Weekday::Sunday,
        _ => return None,
    })
}

/// A cron expression in quotes (`"…"`, `'…'` or backticks), possibly over several words.
fn read_quoted(words: &mut Words) -> Result<String, WhenError> {
    let start = words.offset();
    let text = &words.text[start..];
    let quote = text.chars().next().ok_or(WhenError::CronQuotes)?;
    let close = match quote {
        '"' | '\'' | '`' => quote,
        '“' => '”',
        _ => return Err(WhenError::CronQuotes),
    };
    let inner = &text[quote.len_utf8()..];
    let end = inner.find(close).ok_or(WhenError::CronQuotes)?;
    let expr = inner[..end].trim().to_string();
    let after = start + quote.len_utf8() + end + close.len_utf8();
    // Skip the words the quoted text covered.
    while words.offset() < after && words.next().is_some() {}
    if words.offset() < after {
        return Err(WhenError::CronQuotes);
    }
    Ok(expr)
}

fn zoned(at: UnixMs, tz: &TimeZone) -> Result<Zoned, WhenError> {
    Ok(Timestamp::from_millisecond(at.0)
        .map_err(|_| SpecError::OutOfRange)?
        .to_zoned(tz.clone()))
}

fn next_day(day: Date) -> Result<Date, WhenError> {
    day.tomorrow().map_err(|_| SpecError::OutOfRange.into())
}

/// A local date and clock time in `tz` (a time skipped by a daylight-saving change moves
/// forward by the gap).
fn local(day: Date, time: Time, tz: &TimeZone) -> Result<UnixMs, WhenError> {
    let z = day
        .to_datetime(time)
        .to_zoned(tz.clone())
        .map_err(|_| SpecError::OutOfRange)?;
    Ok(UnixMs(z.timestamp().as_millisecond()))
}

fn future(at: UnixMs, now: UnixMs, tz: &TimeZone) -> Result<UnixMs, WhenError> {
    if at <= now {
        return Err(WhenError::Past(super::spec::show_instant(at, tz)));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;

    use super::*;

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").unwrap()
    }

    fn at(y: i16, mo: i8, d: i8, h: i8, mi: i8, s: i8) -> UnixMs {
        let z = date(y, mo, d)
            .at(h, mi, s, 0)
            .in_tz("Europe/Berlin")
            .unwrap();
        UnixMs(z.timestamp().as_millisecond())
    }

    /// Sat 28 Mar 2026 14:00:00 in Berlin, the day before summer time starts.
    fn now() -> UnixMs {
        at(2026, 3, 28, 14, 0, 0)
    }

    fn read(text: &str) -> (When, String) {
        parse(text, now(), &berlin()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn relative_times() {
        let (when, rest) = read("in 10 seconds stand-up");
        assert_eq!(when.first, now().plus(10_000));
        assert_eq!(when.spec, Spec::Once { at: when.first });
        assert_eq!(
            (when.description.as_str(), rest.as_str()),
            ("in 10 seconds", "stand-up")
        );
        assert_eq!(read("in 5 minutes tea").0.first, now().plus(300_000));
        assert_eq!(read("me in an hour to stretch").1, "stretch");
        assert_eq!(
            read("in 1 hour and 30 minutes x").0.first,
            now().plus(5_400_000)
        );
        assert_eq!(read("in 90s x").0.first, now().plus(90_000));
    }

    #[test]
    fn clock_times_in_the_users_zone() {
        assert_eq!(read("at 14:30 coffee").0.first, at(2026, 3, 28, 14, 30, 0));
        // 9:00 has passed today: tomorrow, which is already summer time.
        assert_eq!(read("at 9:00 coffee").0.first, at(2026, 3, 29, 9, 0, 0));
        assert_eq!(read("at 9pm x").0.first, at(2026, 3, 28, 21, 0, 0));
        assert_eq!(read("at 9:30 pm x").0.first, at(2026, 3, 28, 21, 30, 0));
        let (when, rest) = read("tomorrow at 9:00 stand-up");
        assert_eq!(when.first, at(2026, 3, 29, 9, 0, 0));
        assert_eq!(when.description, "tomorrow at 9:00");
        assert_eq!(rest, "stand-up");
        // Tomorrow 9:00 is 18 hours away, not 19: the clocks go forward overnight.
        assert_eq!(when.first.since(now()), 18 * 3_600_000);
        assert_eq!(
            read("on 2026-12-24 18:00 presents").0.first,
            at(2026, 12, 24, 18, 0, 0)
        );
        assert_eq!(read("on 2026-12-24 x").0.first, at(2026, 12, 24, 9, 0, 0));
    }

    #[test]
    fn recurring_phrases() {
        let (when, rest) = read("every day at 9:00 stand-up");
        assert_eq!(
            when.spec,
            Spec::Cron {
                expr: "0 9 * * *".into()
            }
        );
        assert_eq!(when.first, at(2026, 3, 29, 9, 0, 0));
        assert_eq!(rest, "stand-up");
        let (when, _) = read("every weekday at 9:00 stand-up");
        assert_eq!(
            when.spec,
            Spec::Cron {
                expr: "0 9 * * 1-5".into()
            }
        );
        // Saturday: the next weekday is Monday.
        assert_eq!(when.first, at(2026, 3, 30, 9, 0, 0));
        let (when, _) = read("every monday and friday at 8:15 x");
        assert_eq!(
            when.spec,
            Spec::Cron {
                expr: "15 8 * * 1,5".into()
            }
        );
        let (when, rest) = read("every 2 hours drink water");
        assert_eq!(
            when.spec,
            Spec::Every {
                every_ms: 7_200_000,
                anchor: now().plus(7_200_000)
            }
        );
        assert_eq!(rest, "drink water");
        assert_eq!(read("every hour x").0.first, now().plus(3_600_000));
        let (when, rest) = read("cron \"0 9 * * 1-5\" open PRs");
        assert_eq!(
            when.spec,
            Spec::Cron {
                expr: "0 9 * * 1-5".into()
            }
        );
        assert_eq!(when.description, "cron \"0 9 * * 1-5\"");
        assert_eq!(rest, "open PRs");
    }

    #[test]
    fn bad_input_is_named() {
        let err = |text: &str| parse(text, now(), &berlin()).unwrap_err();
        assert_eq!(err("in banana"), WhenError::Span("banana".into()));
        assert_eq!(err("in 5 bananas x"), WhenError::Span("5".into()));
        assert!(matches!(
            err("cron \"0 9 * * 1-5 * 2026\" x"),
            WhenError::Spec(SpecError::CronFields { fields: 7, .. })
        ));
        assert_eq!(err("cron 0 9 * * *"), WhenError::CronQuotes);
        assert!(matches!(err("on 2020-01-01 10:00 x"), WhenError::Past(_)));
        assert!(matches!(err("today at 9:00 x"), WhenError::Past(_)));
        assert_eq!(err("at 25:00 x"), WhenError::Clock("25:00".into()));
        assert_eq!(err("on 2026-13-01 x"), WhenError::Date("2026-13-01".into()));
        assert_eq!(err("someday x"), WhenError::Unknown("someday".into()));
        assert_eq!(err(""), WhenError::Missing);
        assert!(matches!(err("in 0 seconds x"), WhenError::Past(_)));
    }

    #[test]
    fn tool_phrases_must_be_only_a_time() {
        assert!(parse_only("tomorrow at 9:00", now(), &berlin()).is_ok());
        assert!(parse_only("tomorrow at 9:00 coffee", now(), &berlin()).is_err());
    }
}

//! Checks shared by the kinds that write systemd units (`systemd_timer`,
//! `systemd_dropin`, `mount`, `limits`): unit names and calendar
//! expressions.

use super::Problems;

/// Where systemd looks for the units and drop-ins the agent writes.
pub const UNIT_DIRECTORY: &str = "/etc/systemd/system";

/// `/etc/systemd/system/UNIT.d/NAME.conf`: a drop-in of `unit`.
pub fn dropin_path(unit: &str, name: &str) -> String {
    format!("{UNIT_DIRECTORY}/{unit}.d/{name}.conf")
}

/// The unit types a drop-in or a limit may name.
const UNIT_SUFFIXES: &[&str] = &[
    ".service",
    ".socket",
    ".timer",
    ".mount",
    ".automount",
    ".swap",
    ".target",
    ".path",
    ".slice",
    ".scope",
    ".device",
];

/// A unit name systemd accepts: letters, digits and `:-_.\@`, at most 255
/// characters. With `suffix_required`, it must end in a unit type
/// (`nginx.service`); without, it must not have one (a timer's base name).
pub(crate) fn check_unit_name(
    name: &str,
    field: &'static str,
    suffix_required: bool,
    problems: &mut Problems,
) {
    let suffix = UNIT_SUFFIXES.iter().find(|suffix| name.ends_with(*suffix));
    if name.is_empty() {
        problems.push((field, format!("{field} is empty")));
    } else if name.len() > 255
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c))
    {
        problems.push((field, format!(
            "{field} `{name}` is not a systemd unit name: use letters, digits and `:-_.@`, e.g. `nginx.service`"
        )));
    } else if suffix_required && suffix.is_none() {
        problems.push((
            field,
            format!(
                "{field} `{name}` has no unit type: write the whole unit name, e.g. `{name}.service`"
            ),
        ));
    } else if let (false, Some(suffix)) = (suffix_required, suffix) {
        problems.push((
            field,
            format!(
                "{field} `{name}` ends in `{suffix}`: write the name without it, e.g. `{}`; the kind adds `.timer` and `.service`",
                name.trim_end_matches(suffix)
            ),
        ));
    }
}

/// Shorthands systemd accepts for a calendar expression.
const CALENDAR_SHORTHANDS: &[&str] = &[
    "minutely",
    "hourly",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "annually",
    "quarterly",
    "semiannually",
];

const WEEKDAYS: &[&str] = &[
    "mon",
    "tue",
    "wed",
    "thu",
    "fri",
    "sat",
    "sun",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// Why a calendar expression (`OnCalendar=`) is refused, or `None` when it
/// has the shape systemd.time(7) describes: `[WEEKDAYS] [[YEAR-]MONTH-DAY]
/// [HOUR:MINUTE[:SECOND]] [TIMEZONE]`, each number a `*`, a value, a list
/// (`1,15`), a range (`1..5`) or a repetition (`*:0/15`), or one of the
/// shorthands (`daily`, `weekly`, …). The agent also asks `systemd-analyze
/// calendar` before it writes the timer, so what this lets through systemd
/// still judges.
pub fn calendar_problem(expression: &str) -> Option<String> {
    let text = expression.trim();
    if text.is_empty() {
        return Some("is empty".into());
    }
    // Seconds since the epoch.
    if let Some(seconds) = text.strip_prefix('@') {
        return (seconds.is_empty() || !seconds.chars().all(|c| c.is_ascii_digit()))
            .then(|| format!("has `@{seconds}`: after `@` come the seconds since 1970"));
    }
    let mut words: Vec<&str> = text.split_whitespace().collect();
    // A time zone comes last: `UTC` or an area name with a `/`.
    if let Some(last) = words.last()
        && words.len() > 1
        && (last.eq_ignore_ascii_case("UTC")
            || (last.contains('/')
                && last.starts_with(|c: char| c.is_ascii_alphabetic())
                && last
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c))))
    {
        words.pop();
    }
    if let [word] = words.as_slice()
        && CALENDAR_SHORTHANDS.contains(&word.to_ascii_lowercase().as_str())
    {
        return None;
    }
    let mut words = words.into_iter().peekable();
    if let Some(first) = words.peek()
        && first.starts_with(|c: char| c.is_ascii_alphabetic())
    {
        for part in first.split(',') {
            for day in part.split("..").flat_map(|day| day.split('-')) {
                if !WEEKDAYS.contains(&day.to_ascii_lowercase().as_str()) {
                    return Some(format!(
                        "has `{day}` where a weekday (Mon … Sun) or a shorthand (daily, weekly, …) belongs"
                    ));
                }
            }
        }
        words.next();
    }
    let (mut date_seen, mut time_seen) = (false, false);
    for word in words {
        if word.contains(':') && !time_seen {
            time_seen = true;
            let parts: Vec<&str> = word.split(':').collect();
            if !(2..=3).contains(&parts.len()) {
                return Some(format!(
                    "has time `{word}`: write HOUR:MINUTE or HOUR:MINUTE:SECOND"
                ));
            }
            for (part, (what, max)) in
                parts
                    .iter()
                    .zip([("hour", 23), ("minute", 59), ("second", 59)])
            {
                if let Some(problem) = component_problem(part, what, 0, max, what == "second") {
                    return Some(format!("has time `{word}`: {problem}"));
                }
            }
        } else if word.contains('-') && !date_seen && !time_seen {
            date_seen = true;
            // `~` in place of the second `-` counts days from the end of
            // the month (`*-02~03`).
            let normalized = word.replace('~', "-");
            let parts: Vec<&str> = normalized.splitn(3, '-').collect();
            let (year, month, day) = match parts.as_slice() {
                [month, day] => (None, *month, *day),
                [year, month, day] => (Some(*year), *month, *day),
                _ => return Some(format!("has date `{word}`: write [YEAR-]MONTH-DAY")),
            };
            for (part, (what, min, max)) in [year.unwrap_or("*"), month, day].iter().zip([
                ("year", 1970, 2199),
                ("month", 1, 12),
                ("day", 1, 31),
            ]) {
                if let Some(problem) = component_problem(part, what, min, max, false) {
                    return Some(format!("has date `{word}`: {problem}"));
                }
            }
        } else {
            return Some(format!(
                "has `{word}` where a date (2024-*-01), a time (04:00) or a time zone belongs"
            ));
        }
    }
    None
}

/// A problem with one number of a date or time: `*`, a value in
/// `min..=max`, lists, ranges and repetitions of them.
fn component_problem(text: &str, what: &str, min: u32, max: u32, fraction: bool) -> Option<String> {
    if text.is_empty() {
        return Some(format!("the {what} is missing"));
    }
    for item in text.split(',') {
        let (values, repeat) = match item.split_once('/') {
            Some((values, repeat)) => (values, Some(repeat)),
            None => (item, None),
        };
        if let Some(repeat) = repeat
            && (repeat.is_empty()
                || !repeat
                    .chars()
                    .all(|c| c.is_ascii_digit() || (fraction && c == '.')))
        {
            return Some(format!("the {what} repetition `{repeat}` is not a number"));
        }
        for value in values.split("..") {
            if value == "*" {
                continue;
            }
            let whole = if fraction {
                value.split_once('.').map_or(value, |(whole, _)| whole)
            } else {
                value
            };
            match whole.parse::<u32>() {
                Ok(number) if (min..=max).contains(&number) => {}
                Ok(number) => {
                    return Some(format!("{what} {number} is out of range {min}–{max}"));
                }
                Err(_) => return Some(format!("the {what} `{value}` is not a number")),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_expressions_systemd_documents_are_accepted() {
        for expression in [
            "daily",
            "Weekly",
            "*-*-* 04:00:00",
            "Mon..Fri 09:00",
            "Sat,Sun 10:30",
            "*:0/15",
            "2024-01-01",
            "*-02~03 12:00",
            "*-*-1,15 03:00:00 UTC",
            "Mon *-*-* 00:00:00 Europe/Berlin",
            "*-*-* *:*:00/10.5",
            "quarterly",
            "12:00",
            "Mon-Fri 10:00",
            "*-*-* 00/2:00",
            "@1700000000",
            "Sun *-*-* 00:00:00 America/New_York",
            "*-*-* 00:00:00 utc",
            "hourly UTC",
        ] {
            assert_eq!(calendar_problem(expression), None, "{expression}");
        }
    }

    #[test]
    fn calendar_expressions_that_are_not_are_refused_saying_which_part() {
        for (expression, words) in [
            ("", "is empty"),
            ("every day", "`every` where a weekday"),
            ("*-*-* 25:00", "hour 25 is out of range"),
            ("*-13-01", "month 13 is out of range"),
            ("Mon 04:x0", "minute `x0` is not a number"),
            ("04:00 tomorrow", "`tomorrow` where a date"),
            ("*:0/", "repetition"),
            ("@soon", "seconds since 1970"),
        ] {
            let problem = calendar_problem(expression).expect(expression);
            assert!(problem.contains(words), "{expression}: {problem}");
        }
    }
}

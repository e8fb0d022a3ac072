//! Logs through `tracing`, in the form their reader wants. Under systemd
//! (`JOURNAL_STREAM` set) each line starts with its syslog priority (`<3>`
//! error … `<7>` debug), which journald turns into the entry's priority,
//! and carries no timestamp (journald stamps it) and no colour; a pipe or a
//! file gets no colour and no timestamp either; a terminal gets both. JSON
//! logs (one object a line, with a timestamp) are the option for log
//! shippers. `RUST_LOG` filters, `info` by default.
//!
//! Shared by `cms-agent` and `cms-server`.

#![forbid(unsafe_code)]

use std::fmt;

use clap::ValueEnum;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Lines for people and journald.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// Where text logs go, which decides how they look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// journald: priority prefix, no timestamp, no colour.
    Journal,
    /// A pipe or a file: no timestamp, no colour.
    Plain,
    /// A terminal: timestamps, and colour unless `NO_COLOR`.
    Terminal { colour: bool },
}

impl LogTarget {
    /// From the environment: `JOURNAL_STREAM` set, stderr a terminal,
    /// `NO_COLOR` set.
    pub fn detect() -> LogTarget {
        use std::io::IsTerminal;
        let set = |name: &str| std::env::var_os(name).is_some_and(|value| !value.is_empty());
        LogTarget::from_environment(
            set("JOURNAL_STREAM"),
            std::io::stderr().is_terminal(),
            set("NO_COLOR"),
        )
    }

    pub fn from_environment(journal_stream: bool, terminal: bool, no_color: bool) -> LogTarget {
        match (journal_stream, terminal) {
            (true, _) => LogTarget::Journal,
            (false, false) => LogTarget::Plain,
            (false, true) => LogTarget::Terminal { colour: !no_color },
        }
    }
}

/// Installs the global subscriber writing to stderr; a second call does
/// nothing.
pub fn init(format: LogFormat) {
    let _ = tracing::subscriber::set_global_default(subscriber(
        format,
        LogTarget::detect(),
        std::io::stderr,
    ));
}

/// The subscriber for `format` and `target`, writing to `writer`.
pub fn subscriber<W>(
    format: LogFormat,
    target: LogTarget,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match (format, target) {
        (LogFormat::Json, _) => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .finish(),
        ),
        (LogFormat::Text, LogTarget::Journal) => Box::new(
            builder
                .with_ansi(false)
                .event_format(JournalPriority(
                    tracing_subscriber::fmt::format()
                        .without_time()
                        .with_ansi(false),
                ))
                .finish(),
        ),
        (LogFormat::Text, LogTarget::Plain) => {
            Box::new(builder.with_ansi(false).without_time().finish())
        }
        (LogFormat::Text, LogTarget::Terminal { colour }) => {
            Box::new(builder.with_ansi(colour).finish())
        }
    }
}

/// Prefixes each line with its syslog priority, as `sd-daemon(3)` describes.
struct JournalPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(context, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log_with(format: LogFormat, target: LogTarget) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = subscriber(format, target, move || writer.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(node = "web-1", "catalog refused");
            tracing::info!(revision = "abc123", "serving");
        });
        let bytes = captured.0.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("UTF-8")
    }

    #[test]
    fn under_journald_lines_carry_their_priority_and_no_timestamp_or_colour() {
        let text = log_with(LogFormat::Text, LogTarget::Journal);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        // Right after the priority comes the level: no timestamp.
        fn after<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
            line.strip_prefix(prefix).map(str::trim_start)
        }
        assert!(
            after(lines[0], "<4>").is_some_and(|rest| rest.starts_with("WARN ")),
            "{text}"
        );
        assert!(
            lines[0].contains("catalog refused node=\"web-1\""),
            "{text}"
        );
        assert!(
            after(lines[1], "<6>").is_some_and(|rest| rest.starts_with("INFO ")),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "colour codes in {text:?}");
    }

    #[test]
    fn into_a_pipe_lines_have_no_colour_and_no_timestamp() {
        let text = log_with(LogFormat::Text, LogTarget::Plain);
        let first = text.lines().next().expect("a line");
        assert!(first.trim_start().starts_with("WARN "), "{text}");
        assert!(!text.contains('\u{1b}'), "{text:?}");
    }

    #[test]
    fn json_logs_are_one_object_a_line_with_level_message_and_fields() {
        let text = log_with(LogFormat::Json, LogTarget::Journal);
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON object"))
            .collect();
        assert_eq!(events.len(), 2, "{text}");
        assert_eq!(events[0]["level"], "WARN");
        assert_eq!(events[0]["message"], "catalog refused");
        assert_eq!(events[0]["node"], "web-1");
        assert_eq!(events[1]["revision"], "abc123");
        assert!(events[1]["timestamp"].is_string(), "{text}");
    }

    #[test]
    fn the_environment_decides_the_target() {
        assert_eq!(
            LogTarget::from_environment(true, true, false),
            LogTarget::Journal
        );
        assert_eq!(
            LogTarget::from_environment(false, false, false),
            LogTarget::Plain
        );
        assert_eq!(
            LogTarget::from_environment(false, true, true),
            LogTarget::Terminal { colour: false }
        );
    }
}

//! The fields of the human log format, escaped: a message or field value that carries a line break
//! or another control character (from a client, the control plane's answer or the engine) is
//! written as `\n`, `\r`, `\t` or `\u{…}`, so that every event is exactly one line and nothing from
//! outside can forge one. The JSON format escapes the same characters by itself.

use std::fmt;

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};

/// `tracing_subscriber`'s default field format (`message name=value …`), with every character
/// that could break or colour a line escaped.
#[derive(Debug, Default)]
pub struct EscapedFields {
    inner: DefaultFields,
}

impl EscapedFields {
    pub fn new() -> EscapedFields {
        EscapedFields::default()
    }
}

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        // The field names go without colour: the escaping would show their escape codes as text.
        let mut escaping = Escaping(&mut writer);
        self.inner.format_fields(Writer::new(&mut escaping), fields)
    }
}

/// A writer that escapes control characters on their way through.
struct Escaping<'a, W>(&'a mut W);

/// Whether `c` may not appear raw in a log line: C0 and C1 controls (line feed, carriage return,
/// escape…), DEL, and the Unicode line and paragraph separators.
fn unsafe_in_a_line(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(unsafe_in_a_line) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                other => write!(self.0, "\\u{{{:x}}}", u32::from(other))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// `text` as [`EscapedFields`] writes it.
pub fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let _ = fmt::Write::write_str(&mut Escaping(&mut out), text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escaped("plain text, é ✓"), "plain text, é ✓");
        assert_eq!(
            escaped("a\r\nINFO forged\tline\u{1b}[31m\u{7f}\u{85}\u{2028}"),
            "a\\r\\nINFO forged\\tline\\u{1b}[31m\\u{7f}\\u{85}\\u{2028}"
        );
    }

    #[test]
    fn every_event_is_one_line() {
        use std::io::Write;
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;

        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let sink = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(EscapedFields::new())
                .with_ansi(false)
                .with_writer(move || sink.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", id = %"x\ny");
            let _entered = span.enter();
            let cause = "no such container\r\nERROR forged";
            tracing::warn!(error = %cause, debug = ?cause, "said: {}", "two\nlines");
        });
        let text = String::from_utf8(lines.0.lock().expect("lines").clone()).expect("utf-8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("error=no such container\\r\\nERROR forged"),
            "{text}"
        );
        assert!(text.contains("said: two\\nlines"), "{text}");
        assert!(text.contains("id=x\\ny"), "{text}");
    }
}

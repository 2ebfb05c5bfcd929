//! The history as CSV or JSON, streamed page by page from the store (an export of years of
//! alerts never sits in memory whole). Agent text is untrusted: a CSV cell that a spreadsheet
//! would read as a formula (starting with `=`, `+`, `-`, `@`, a tab or a carriage return) gets
//! a leading `'`; JSON is serde_json's (escaped, and served as `application/json`, never HTML).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse as _, Response};

use super::Console;
use crate::channel::when_utc;
use crate::store::console::{AlertFilter, ConsoleAlert};

/// Rows read from the store per page of the export.
const PAGE: usize = 500;

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated, RFC 4180 quoting, formulas neutralised.
    Csv,
    /// One JSON array of objects.
    Json,
}

/// A CSV cell: neutralised if a spreadsheet would read it as a formula, then quoted.
pub fn csv_cell(text: &str) -> String {
    let neutral = match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}"),
        _ => text.to_owned(),
    };
    format!("\"{}\"", neutral.replace('"', "\"\""))
}

const HEADER: [&str; 14] = [
    "alert_id",
    "received_utc",
    "type",
    "state",
    "user",
    "host",
    "ip",
    "location",
    "message",
    "agent",
    "source",
    "cancelled_utc",
    "cancel_reason",
    "responder",
];

fn fields(a: &ConsoleAlert) -> [String; 14] {
    let r = &a.record;
    [
        r.alert_id.to_string(),
        when_utc(r.received_at_ms / 1000),
        if r.test { "drill" } else { "emergency" }.to_owned(),
        a.state.clone(),
        r.user.clone(),
        r.host.clone(),
        r.ip.clone(),
        r.location.clone(),
        r.message.clone(),
        r.enrolled.as_ref().map(|e| e.name.clone()).unwrap_or_default(),
        r.source.clone(),
        r.cancellation.as_ref().map(|c| when_utc(c.at_ms / 1000)).unwrap_or_default(),
        r.cancellation.as_ref().map(|c| c.reason.clone()).unwrap_or_default(),
        a.by.clone(),
    ]
}

fn render(format: Format, rows: &[ConsoleAlert], first: bool) -> String {
    let mut out = String::new();
    for (i, a) in rows.iter().enumerate() {
        let f = fields(a);
        match format {
            Format::Csv => {
                out.push_str(&f.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(","));
                out.push_str("\r\n");
            }
            Format::Json => {
                if !(first && i == 0) {
                    out.push_str(",\n");
                }
                let obj: serde_json::Map<String, serde_json::Value> =
                    HEADER.iter().zip(f).map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v))).collect();
                out.push_str(&serde_json::Value::Object(obj).to_string());
            }
        }
    }
    out
}

/// The export response: the header, then a page of rows at a time, then the end.
pub fn export(console: Arc<Console>, filter: AlertFilter, format: Format) -> Response {
    enum Step {
        Start,
        Page(Option<(i64, String)>, bool),
        End,
        Done,
    }
    let stream = futures_util::stream::unfold(Step::Start, move |step| {
        let (console, filter) = (console.clone(), filter.clone());
        async move {
            match step {
                Step::Start => {
                    let head = match format {
                        Format::Csv => HEADER.join(",") + "\r\n",
                        Format::Json => "[\n".to_owned(),
                    };
                    Some((Ok::<_, std::io::Error>(Bytes::from(head)), Step::Page(None, true)))
                }
                Step::Page(after, first) => {
                    let rows = console.store.console_alerts(&filter, after, PAGE).await;
                    match rows {
                        Ok(rows) if rows.is_empty() => Some((Ok(Bytes::new()), Step::End)),
                        Ok(rows) => {
                            let last = rows.last().map(|a| (a.record.received_at_ms, a.record.alert_id.to_string()));
                            let text = render(format, &rows, first);
                            let next = if rows.len() < PAGE { Step::End } else { Step::Page(last, false) };
                            Some((Ok(Bytes::from(text)), next))
                        }
                        // Cut the download short: the client sees an incomplete transfer, not a
                        // file that looks whole.
                        Err(e) => Some((Err(std::io::Error::other(e.to_string())), Step::Done)),
                    }
                }
                Step::End => {
                    let tail = if format == Format::Json { "\n]\n" } else { "" };
                    Some((Ok(Bytes::from(tail)), Step::Done))
                }
                Step::Done => None,
            }
        }
    });
    let (ctype, name) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "sos-alerts.csv"),
        Format::Json => ("application/json", "sos-alerts.json"),
    };
    (
        [
            (header::CONTENT_TYPE, ctype.to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::csv_cell;

    #[test]
    fn formula_cells_are_neutralised_and_quotes_doubled() {
        for bad in ["=HYPERLINK(\"x\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"] {
            let cell = csv_cell(bad);
            assert!(cell.starts_with("\"'"), "{bad:?} -> {cell}");
        }
        assert_eq!(csv_cell("plain"), "\"plain\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}

//! JSON on stdout: one line per invocation, keys sorted. Nothing else writes to stdout.

use std::io::Write;

use serde::Serialize;
use serde_json::Value;

/// Prints `value` as one line of JSON with sorted keys.
pub(crate) fn print<T: Serialize>(value: &T) {
    // Going through `Value` sorts object keys (serde_json's map is ordered).
    let value = serde_json::to_value(value).unwrap_or(Value::Null);
    let mut stdout = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut stdout, &value);
    let _ = stdout.write_all(b"\n");
    let _ = stdout.flush();
}

/// Prints `null`.
pub(crate) fn null() {
    print(&Value::Null);
}

/// Now in UTC, as consullock writes it (`2017-11-30T14:55:49.322108`).
pub(crate) fn now_iso8601() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]"
    );
    now.format(&format).unwrap_or_else(|_| now.to_string())
}

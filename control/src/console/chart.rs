//! Server-rendered SVG charts: a report with a day column becomes a grouped bar chart of its
//! numeric columns summed per day (at most [`MAX_SERIES`] series), inline in the page.

use std::collections::BTreeMap;

use maud::{html, Markup};
use moat_proto::report::Table;

use super::table::number;

/// The most numeric columns one chart draws.
const MAX_SERIES: usize = 6;
const COLORS: [&str; MAX_SERIES] = [
    "#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2",
];
const W: f64 = 960.0;
const H: f64 = 260.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 36.0;
const TOP: f64 = 12.0;

/// The day column of a table (`day` or `date`, any case).
fn day_column(t: &Table) -> Option<usize> {
    t.columns
        .iter()
        .position(|c| c.eq_ignore_ascii_case("day") || c.eq_ignore_ascii_case("date"))
}

/// The columns whose every non-empty cell is a number (percentages excluded: a sum of shares
/// means nothing), other than the day column.
fn numeric_columns(t: &Table, day: usize) -> Vec<usize> {
    (0..t.columns.len())
        .filter(|&c| c != day)
        .filter(|&c| {
            let mut any = false;
            let all = t.rows.iter().all(|r| {
                let cell = r.get(c).map_or("", String::as_str).trim();
                if cell.is_empty() {
                    return true;
                }
                any = true;
                !cell.ends_with('%') && number(cell).is_some()
            });
            all && any
        })
        .take(MAX_SERIES)
        .collect()
}

/// The chart of `t`, when it has a day column, a numeric column and a row.
pub(crate) fn day_chart(t: &Table) -> Option<Markup> {
    let day = day_column(t)?;
    let cols = numeric_columns(t, day);
    if cols.is_empty() || t.rows.is_empty() {
        return None;
    }
    let mut sums: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in &t.rows {
        let d = r.get(day).map_or("", String::as_str);
        let e = sums.entry(d).or_insert_with(|| vec![0.0; cols.len()]);
        for (i, &c) in cols.iter().enumerate() {
            e[i] += r.get(c).and_then(|x| number(x)).unwrap_or(0.0);
        }
    }
    let max = sums
        .values()
        .flat_map(|v| v.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let plot_w = W - LEFT - 8.0;
    let plot_h = H - TOP - BOTTOM;
    let group = plot_w / sums.len() as f64;
    let bar = (group * 0.8 / cols.len() as f64).max(1.0);
    let y = |v: f64| TOP + plot_h - v / max * plot_h;
    let label_every = (sums.len() / 12).max(1);
    Some(html! {
        div.chart {
            svg xmlns="http://www.w3.org/2000/svg" viewBox={"0 0 " (W) " " (H)} width="100%" role="img"
                aria-label={(t.title) " per day"} {
                @for k in 0..=4 {
                    @let v = max * f64::from(k) / 4.0;
                    line x1=(LEFT) x2=(W - 8.0) y1=(y(v)) y2=(y(v)) stroke="#e4e7eb" {}
                    text x=(LEFT - 6.0) y=(y(v) + 4.0) text-anchor="end" font-size="11" fill="#52606d" { (fmt(v)) }
                }
                @for (g, (d, vals)) in sums.iter().enumerate() {
                    @let x0 = LEFT + g as f64 * group + group * 0.1;
                    @for (i, v) in vals.iter().enumerate() {
                        rect x=(x0 + i as f64 * bar) y=(y(*v)) width=(bar * 0.92) height=(TOP + plot_h - y(*v))
                            fill=(COLORS[i % MAX_SERIES]) {
                            title { (d) " · " (t.columns[cols[i]]) ": " (fmt(*v)) }
                        }
                    }
                    @if g % label_every == 0 {
                        text x=(x0 + group * 0.4) y=(H - BOTTOM + 16.0) text-anchor="middle" font-size="11" fill="#52606d" { (d) }
                    }
                }
                @for (i, &c) in cols.iter().enumerate() {
                    rect x=(LEFT + i as f64 * 150.0) y=(H - 12.0) width="10" height="10" fill=(COLORS[i]) {}
                    text x=(LEFT + 14.0 + i as f64 * 150.0) y=(H - 3.0) font-size="11" fill="#1f2933" { (t.columns[c]) }
                }
            }
        }
    })
}

/// A value for an axis or a tooltip: whole numbers without decimals.
fn fmt(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_numeric_columns_per_day() {
        let t = Table {
            title: "Inbound".into(),
            columns: vec![
                "Day".into(),
                "Connector".into(),
                "Messages".into(),
                "Share".into(),
            ],
            rows: vec![
                vec!["2026-01-01".into(), "a".into(), "3".into(), "10.0%".into()],
                vec!["2026-01-01".into(), "b".into(), "4".into(), "90.0%".into()],
                vec!["2026-01-02".into(), "a".into(), "5".into(), "100.0%".into()],
            ],
        };
        let svg = day_chart(&t).expect("chart").into_string();
        assert!(svg.contains("<svg"));
        assert!(svg.contains("2026-01-01 · Messages: 7"), "{svg}");
        assert!(svg.contains("2026-01-02 · Messages: 5"));
        assert!(!svg.contains("Share"), "shares are not summed");
    }

    #[test]
    fn no_chart_without_a_day_or_a_number() {
        let t = Table {
            title: "x".into(),
            columns: vec!["Connector".into(), "Messages".into()],
            rows: vec![vec!["a".into(), "1".into()]],
        };
        assert!(day_chart(&t).is_none());
        let t = Table {
            title: "x".into(),
            columns: vec!["Day".into(), "Connector".into()],
            rows: vec![vec!["2026-01-01".into(), "a".into()]],
        };
        assert!(day_chart(&t).is_none());
    }
}

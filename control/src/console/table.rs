//! Every list the console shows is one [`Grid`] (columns and rows of text, as
//! [`moat_proto::report::Table`] has them, with optional links), rendered by [`render`] as
//! `<table class="data">`: sorted by a column through links (`?sort=COL&dir=asc|desc`),
//! filtered by a text box (`?q=`), paged 50 rows at a time (`?page=N`, from 1), all without
//! JavaScript. The other query parameters of the page (a report's tenant and days) are kept in
//! every link.
//!
//! Lists that grow with the cluster (connectors, alerts, audit, restricted) page through the
//! admin API instead, [`ADMIN_PAGE`] items a page: [`paged`] renders one admin page (sorted
//! and filtered as above, within that page) with "First page" and "Next page" links that
//! carry the admin API's opaque page token as `?after=TOKEN`.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use maud::{html, Markup};
use moat_proto::report::Table;

/// Rows per page.
pub(crate) const PAGE_ROWS: usize = 50;

/// Items per admin page of a paged list ([`paged`]): one table page.
pub(crate) const ADMIN_PAGE: u32 = PAGE_ROWS as u32;

/// The query parameters of a page.
#[derive(Clone, Debug, Default)]
pub(crate) struct Params(pub(crate) BTreeMap<String, String>);

impl Params {
    /// Parses a URL's query string (`None`: no query).
    pub(crate) fn parse(query: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The value of `key`, empty when absent.
    pub(crate) fn get(&self, key: &str) -> &str {
        self.0.get(key).map_or("", String::as_str)
    }

    /// This query with `changes` applied (an empty value removes the key), as `?...`.
    fn with(&self, changes: &[(&str, &str)]) -> String {
        let mut m = self.0.clone();
        for (k, v) in changes {
            if v.is_empty() {
                m.remove(*k);
            } else {
                m.insert((*k).to_owned(), (*v).to_owned());
            }
        }
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &m {
            s.append_pair(k, v);
        }
        format!("?{}", s.finish())
    }
}

/// A list to show: column headings and rows of text, each row with an optional link (put on
/// its first cell).
#[derive(Clone, Debug, Default)]
pub(crate) struct Grid {
    /// Column headings.
    pub(crate) columns: Vec<String>,
    /// Rows, one cell per column.
    pub(crate) rows: Vec<Vec<String>>,
    /// Per row, where its first cell links to.
    pub(crate) links: Vec<Option<String>>,
    /// Columns whose words (match, mismatch, delivered, ...) show as coloured badges.
    pub(crate) badges: Vec<usize>,
}

impl From<Table> for Grid {
    fn from(t: Table) -> Self {
        Self {
            links: vec![None; t.rows.len()],
            columns: t.columns,
            rows: t.rows,
            badges: Vec::new(),
        }
    }
}

impl Grid {
    /// An empty grid with these columns.
    pub(crate) fn new(columns: &[&str]) -> Self {
        Self {
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            ..Default::default()
        }
    }

    /// Adds a row, linked when `link` is set.
    pub(crate) fn push(&mut self, row: Vec<String>, link: Option<String>) {
        self.rows.push(row);
        self.links.push(link);
    }
}

/// A cell's value as a number, when it reads as one (`12`, `3.5%`, `1,024`).
pub(crate) fn number(cell: &str) -> Option<f64> {
    let t = cell.trim().trim_end_matches('%').replace(',', "");
    if t.is_empty() {
        return None;
    }
    t.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// A cell's class: numbers align right; long text (a `Received:` line, a reason) may break
/// anywhere so that the table keeps to the page's width.
fn cell_class(cell: &str) -> Option<&'static str> {
    if number(cell).is_some() {
        Some("num")
    } else if cell.len() > 48 {
        Some("long")
    } else {
        None
    }
}

/// Orders two cells: as numbers when both are, else as text (case-insensitive).
fn compare(a: &str, b: &str) -> Ordering {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => a.to_lowercase().cmp(&b.to_lowercase()),
    }
}

/// The badge class of a word, if it is one the console colours.
fn badge(word: &str) -> Option<&'static str> {
    Some(match word.to_ascii_lowercase().as_str() {
        "match" | "ok" | "delivered" | "healthy" | "compliant" | "yes" | "voter" => "ok",
        "mismatch" | "failed" | "critical" | "blocked" | "unsupported" => "bad",
        "pending" | "warning" | "unknown" | "unpatched" | "throttled" | "paused" => "warn",
        "no" | "learner" | "-" | "info" => "muted",
        _ => return None,
    })
}

/// The rows `params` select, in the order it asks, and how many matched before paging.
pub(crate) fn select(grid: &Grid, params: &Params) -> (Vec<usize>, usize, usize) {
    let q = params.get("q").trim().to_lowercase();
    let mut idx: Vec<usize> = (0..grid.rows.len())
        .filter(|&i| q.is_empty() || grid.rows[i].iter().any(|c| c.to_lowercase().contains(&q)))
        .collect();
    if let Some(col) = grid
        .columns
        .iter()
        .position(|c| c.eq_ignore_ascii_case(params.get("sort")))
    {
        let desc = params.get("dir") == "desc";
        idx.sort_by(|&a, &b| {
            let o = compare(
                grid.rows[a].get(col).map_or("", String::as_str),
                grid.rows[b].get(col).map_or("", String::as_str),
            );
            if desc {
                o.reverse()
            } else {
                o
            }
        });
    }
    let matched = idx.len();
    let pages = matched.div_ceil(PAGE_ROWS).max(1);
    let page = params
        .get("page")
        .parse::<usize>()
        .unwrap_or(1)
        .clamp(1, pages);
    let shown = idx
        .into_iter()
        .skip((page - 1) * PAGE_ROWS)
        .take(PAGE_ROWS)
        .collect();
    (shown, matched, page)
}

/// The grid as a filter box, a sortable table and a pager; `empty` says what would appear
/// when there is no row at all.
pub(crate) fn render(grid: &Grid, params: &Params, empty: &str) -> Markup {
    let (shown, matched, page) = select(grid, params);
    let pages = matched.div_ceil(PAGE_ROWS).max(1);
    let q = params.get("q");
    let sort = params.get("sort");
    let desc = params.get("dir") == "desc";
    let kept: Vec<(&String, &String)> = params
        .0
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "q" | "page" | "format"))
        .collect();
    html! {
        @if grid.rows.is_empty() {
            div.empty { (empty) }
        } @else {
            form.toolbar method="get" {
                @for (k, v) in &kept { input type="hidden" name=(k) value=(v); }
                input type="search" name="q" value=(q) placeholder="Filter rows" aria-label="Filter rows";
                button.secondary type="submit" { "Filter" }
                @if !q.is_empty() { a href=(params.with(&[("q", ""), ("page", "")])) { "Clear" } }
                span.muted-text { (matched) " of " (grid.rows.len()) " rows" }
            }
            @if shown.is_empty() {
                div.empty { "No row matches “" (q) "”." }
            } @else {
                div.tablewrap { table.data {
                    thead { tr {
                        @for c in &grid.columns {
                            @let on = c.eq_ignore_ascii_case(sort);
                            @let dir = if on && !desc { "desc" } else { "asc" };
                            th { a href=(params.with(&[("sort", c), ("dir", dir), ("page", "")])) {
                                (c) @if on { @if desc { " ▼" } @else { " ▲" } }
                            } }
                        }
                    } }
                    tbody {
                        @for &i in &shown {
                            tr {
                                @for (j, cell) in grid.rows[i].iter().enumerate() {
                                    td class=[cell_class(cell)] {
                                        @if j == 0 {
                                            @if let Some(Some(link)) = grid.links.get(i) {
                                                a href=(link) { (cell) }
                                            } @else { (cell) }
                                        } @else if grid.badges.contains(&j) {
                                            @if let Some(b) = badge(cell) {
                                                span class={"badge " (b)} { (cell) }
                                            } @else { (cell) }
                                        } @else { (cell) }
                                    }
                                }
                            }
                        }
                    }
                } }
                @if pages > 1 {
                    div.pager {
                        @if page > 1 { a href=(params.with(&[("page", &(page - 1).to_string())])) { "← Previous" } }
                        "Page " (page) " of " (pages)
                        @if page < pages { a href=(params.with(&[("page", &(page + 1).to_string())])) { "Next →" } }
                    }
                }
            }
        }
    }
}

/// One admin page of a list as [`render`] shows it, under a line saying that sorting and
/// filtering apply to this page only (`cli`: the `moat admin` command that lists everything),
/// and over the links to the first page (when `?after=` is set) and to the next one (when
/// `next`, the reply's page token, is not empty); both keep the page's other parameters but
/// `page`.
pub(crate) fn paged(grid: &Grid, params: &Params, next: &str, empty: &str, cli: &str) -> Markup {
    let after = params.get("after");
    let first = !after.is_empty();
    html! {
        @if first || !next.is_empty() {
            p.muted-text { "Sorting and filtering apply to this page; use `" (cli) "` for everything." }
        }
        @if first && grid.rows.is_empty() {
            div.empty { "No more rows." }
        } @else {
            (render(grid, params, empty))
        }
        @if first || !next.is_empty() {
            div.pager {
                @if first { a href=(params.with(&[("after", ""), ("page", "")])) { "First page" } }
                @if !next.is_empty() { a href=(params.with(&[("after", next), ("page", "")])) { "Next page" } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(n: usize) -> Grid {
        let mut g = Grid::new(&["Name", "Count"]);
        for i in 0..n {
            g.push(vec![format!("row-{i:03}"), (n - i).to_string()], None);
        }
        g
    }

    #[test]
    fn sorts_numbers_as_numbers_and_filters_and_pages() {
        let g = grid(120);
        let p = Params::parse(Some("sort=count&dir=asc"));
        let (shown, matched, page) = select(&g, &p);
        assert_eq!((matched, page, shown.len()), (120, 1, 50));
        assert_eq!(g.rows[shown[0]][1], "1");
        assert_eq!(g.rows[shown[1]][1], "2");
        let (shown, _, page) = select(&g, &Params::parse(Some("page=3")));
        assert_eq!((page, shown.len()), (3, 20));
        let (shown, _, page) = select(&g, &Params::parse(Some("page=99")));
        assert_eq!((page, shown.len()), (3, 20), "clamped to the last page");
        let (shown, matched, _) = select(&g, &Params::parse(Some("q=ROW-01")));
        assert_eq!((matched, shown.len()), (10, 10));
        let (shown, _, _) = select(&g, &Params::parse(Some("sort=Name&dir=desc")));
        assert_eq!(g.rows[shown[0]][0], "row-119");
    }

    #[test]
    fn renders_links_that_keep_the_other_parameters() {
        let g = grid(60);
        let html = render(
            &g,
            &Params::parse(Some("tenant=a.test&days=7&sort=Count")),
            "none",
        )
        .into_string();
        assert!(html.contains(r#"<table class="data">"#));
        assert!(
            html.contains("?days=7&amp;dir=desc&amp;sort=Count&amp;tenant=a.test"),
            "{html}"
        );
        assert!(
            html.contains("?days=7&amp;page=2&amp;sort=Count&amp;tenant=a.test"),
            "{html}"
        );
        assert!(
            html.contains(r#"<input type="hidden" name="tenant" value="a.test">"#),
            "{html}"
        );
        assert!(html.contains("Page 1 of 2"));
    }

    #[test]
    fn paged_lists_link_the_next_and_first_pages_keeping_the_other_parameters() {
        let token = "p1.4.61/2e&b=c";
        let html = paged(
            &grid(50),
            &Params::parse(Some("q=row&sort=Count&dir=desc")),
            token,
            "none",
            "moat admin connector list",
        )
        .into_string();
        assert!(
            html.contains(
                r#"<a href="?after=p1.4.61%2F2e%26b%3Dc&amp;dir=desc&amp;q=row&amp;sort=Count">Next page</a>"#
            ),
            "{html}"
        );
        assert!(!html.contains("First page"), "{html}");
        assert!(html.contains("apply to this page"), "{html}");

        // On a later page: both links, and the filter keeps the page.
        let on = Params::parse(Some("after=p1.4.61&sort=Count"));
        let html = paged(&grid(3), &on, "p1.4.62", "none", "x").into_string();
        assert!(
            html.contains(r#"<a href="?sort=Count">First page</a>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<a href="?after=p1.4.62&amp;sort=Count">Next page</a>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<input type="hidden" name="after" value="p1.4.61">"#),
            "{html}"
        );

        // The last page: no Next; a single page: no pager and no note.
        let html = paged(&grid(3), &on, "", "none", "x").into_string();
        assert!(html.contains("First page") && !html.contains("Next page"));
        let html = paged(&grid(3), &Params::default(), "", "none", "x").into_string();
        assert!(!html.contains("pager") && !html.contains("apply to this page"));
        let html = paged(&grid(0), &on, "", "none", "x").into_string();
        assert!(html.contains("No more rows") && html.contains("First page"));
    }

    #[test]
    fn empty_states_say_what_would_be_there() {
        let html =
            render(&grid(0), &Params::default(), "No connector is restricted.").into_string();
        assert!(html.contains("No connector is restricted."));
        assert!(!html.contains("<table"));
        let html = render(&grid(3), &Params::parse(Some("q=zzz")), "x").into_string();
        assert!(html.contains("No row matches"));
    }

    #[test]
    fn cells_are_escaped_and_links_and_badges_shown() {
        let mut g = Grid::new(&["Entity", "State"]);
        g.badges = vec![1];
        g.push(
            vec!["<b>x</b>".into(), "mismatch".into()],
            Some("/restricted/connector/a/b".into()),
        );
        let html = render(&g, &Params::default(), "").into_string();
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;"));
        assert!(html.contains(r#"<a href="/restricted/connector/a/b">"#));
        assert!(
            html.contains(r#"<span class="badge bad">mismatch</span>"#),
            "{html}"
        );
    }
}

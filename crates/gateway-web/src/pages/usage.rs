//! `/dashboard/usage`: a range's usage by day (a chart and a table), by model and by key; and
//! the bar chart the overview shares. Charts are SVG drawn here: no script, no inline style.

use maud::{Markup, html};

use crate::{thousands, usd};

/// One group of a range's usage (a day, a model or a key).
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRow {
    /// `2026-12-01`, a model, or a key's name.
    pub label: String,
    pub requests: u64,
    pub tokens: u64,
    pub cost_micros: i64,
    pub errors: u64,
    pub p95_latency_ms: u32,
}

/// The ranges the page offers, in days.
pub const RANGES: [u32; 3] = [7, 30, 90];

/// The page's figures: `days` of usage, every day present (zero when idle).
#[derive(Clone, Debug, PartialEq)]
pub struct Usage {
    pub days: u32,
    pub by_day: Vec<UsageRow>,
    pub by_model: Vec<UsageRow>,
    pub by_key: Vec<UsageRow>,
}

const WIDTH: u32 = 720;
const HEIGHT: u32 = 180;
const AXIS: u32 = 1;

/// A bar chart of `values` (labelled by `labels`, same length), with its accessible name.
pub fn bar_chart(name: &str, labels: &[&str], values: &[u64]) -> Markup {
    let max = values.iter().copied().max().unwrap_or(0).max(1);
    let n = u32::try_from(values.len()).unwrap_or(u32::MAX).max(1);
    let slot = f64::from(WIDTH) / f64::from(n);
    let plot = f64::from(HEIGHT - AXIS);
    let bar = (slot * 0.75).max(1.0);
    // The first, middle and last labels under the axis (HTML: the SVG stretches to the
    // page's width, which would stretch its text too).
    let ticks: Vec<usize> = if values.is_empty() {
        Vec::new()
    } else {
        let mut t = vec![0, values.len() / 2, values.len() - 1];
        t.dedup();
        t
    };
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(name) preserveAspectRatio="none" {
                line.grid x1="0" y1="0.5" x2=(WIDTH) y2="0.5" {}
                line.axis x1="0" y1=(HEIGHT - AXIS) x2=(WIDTH) y2=(HEIGHT - AXIS) {}
                @for (i, (label, value)) in labels.iter().zip(values).enumerate() {
                    @let h = (*value as f64 / max as f64 * plot).max(if *value > 0 { 1.0 } else { 0.0 });
                    rect.bar x=(format!("{:.1}", i as f64 * slot + (slot - bar) / 2.0))
                        y=(format!("{:.1}", plot - h)) width=(format!("{bar:.1}")) height=(format!("{h:.1}")) {
                        title { (label) ": " (thousands(*value)) }
                    }
                }
            }
            @if !ticks.is_empty() {
                div.ticks aria-hidden="true" {
                    @for i in &ticks { span { (labels[*i]) } }
                }
            }
            figcaption { (name) " · highest " (thousands(max)) }
        }
    }
}

fn table(first: &str, rows: &[UsageRow], empty: &str) -> Markup {
    html! {
        @if rows.is_empty() {
            div.card.empty { p { (empty) } }
        } @else {
            div.card.table-wrap {
                table {
                    thead { tr {
                        th scope="col" { (first) } th.num scope="col" { "Requests" } th.num scope="col" { "Tokens" }
                        th.num scope="col" { "Cost" } th.num.hide-narrow scope="col" { "Errors" } th.num.hide-narrow scope="col" { "p95 latency" }
                    } }
                    tbody {
                        @for r in rows {
                            tr {
                                td { (r.label) }
                                td.num { (thousands(r.requests)) }
                                td.num { (thousands(r.tokens)) }
                                td.num { (usd(r.cost_micros)) }
                                td.num.hide-narrow { (thousands(r.errors)) }
                                td.num.hide-narrow { (r.p95_latency_ms) " ms" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The page.
pub fn usage(u: &Usage) -> Markup {
    let labels: Vec<&str> = u.by_day.iter().map(|r| r.label.as_str()).collect();
    let tokens: Vec<u64> = u.by_day.iter().map(|r| r.tokens).collect();
    let requests: Vec<u64> = u.by_day.iter().map(|r| r.requests).collect();
    let active: Vec<UsageRow> = u.by_day.iter().rev().filter(|r| r.requests > 0).cloned().collect();
    html! {
        h1 { "Usage" }
        nav.tabs aria-label="Range" {
            @for days in RANGES {
                a href=(format!("/dashboard/usage?days={days}")) aria-current=[(days == u.days).then_some("page")] {
                    (days) " days"
                }
            }
        }
        @if active.is_empty() {
            div.card.empty {
                p { "No requests in the last " (u.days) " days." }
                p { a href="/dashboard/keys" { "Create a key" } " and call the gateway; your usage shows here within a few seconds." }
            }
        } @else {
            div.card {
                h2 { "Tokens a day" }
                (bar_chart(&format!("Tokens a day, the last {} days", u.days), &labels, &tokens))
            }
            div.card {
                h2 { "Requests a day" }
                (bar_chart(&format!("Requests a day, the last {} days", u.days), &labels, &requests))
            }
        }
        h2 { "By model" }
        (table("Model", &u.by_model, "No requests in this range."))
        h2 { "By key" }
        (table("Key", &u.by_key, "No requests in this range."))
        h2 { "By day" }
        (table("Day (UTC)", &active, "No requests in this range."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, requests: u64) -> UsageRow {
        UsageRow {
            label: label.into(),
            requests,
            tokens: requests * 10,
            cost_micros: 0,
            errors: 0,
            p95_latency_ms: 0,
        }
    }

    #[test]
    fn the_chart_has_one_bar_per_day_scaled_to_the_highest() {
        let page = bar_chart("Tokens", &["d1", "d2", "d3"], &[0, 50, 100]).into_string();
        assert_eq!(page.matches("<rect").count(), 3);
        assert!(page.contains("height=\"179.0\""), "the highest bar fills the plot: {page}");
        assert!(page.contains("height=\"0.0\"") && page.contains("d3: 100"));
        assert!(page.contains("role=\"img\" aria-label=\"Tokens\""));
    }

    #[test]
    fn labels_from_users_are_escaped_and_an_idle_range_says_what_to_do() {
        let u = Usage {
            days: 7,
            by_day: vec![row("2026-12-01", 0)],
            by_model: Vec::new(),
            by_key: vec![row("<script>x</script>", 1)],
        };
        let page = usage(&u).into_string();
        assert!(page.contains("No requests in the last 7 days") && page.contains("Create a key"));
        assert!(!page.contains("<script>x") && page.contains("&lt;script&gt;x"));
    }
}

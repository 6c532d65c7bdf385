//! Small log–log line charts as standalone SVG, for the scaling report: a grid of panels, each
//! with a few series. Written by hand rather than with a plotting crate: the report needs
//! lines, points, decade ticks and a legend, and nothing here should cost the workspace a
//! font stack to build.

use std::fmt::Write as _;

/// One line: `(x, y)` points, both positive (the axes are logarithmic); others are dropped.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points in x order.
    pub points: Vec<(f64, f64)>,
}

/// One chart of the grid.
#[derive(Clone, Debug)]
pub struct Panel {
    /// Above the plot.
    pub title: String,
    /// Under the x axis.
    pub x_label: String,
    /// Beside the y axis.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
}

const PANEL_W: f64 = 480.0;
const PANEL_H: f64 = 320.0;
const COLUMNS: usize = 2;
const HEADER: f64 = 56.0;
const MARGIN_LEFT: f64 = 64.0;
const MARGIN_RIGHT: f64 = 16.0;
const MARGIN_TOP: f64 = 36.0;
const MARGIN_BOTTOM: f64 = 44.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// The whole chart: `title` and `subtitle` on top, then the panels two per row.
pub fn svg(title: &str, subtitle: &str, panels: &[Panel]) -> String {
    let rows = panels.len().div_ceil(COLUMNS).max(1);
    let width = PANEL_W * COLUMNS as f64;
    let height = HEADER + PANEL_H * rows as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{x}" y="22" font-size="17" text-anchor="middle">{t}</text>
<text x="{x}" y="42" fill="#555555" text-anchor="middle">{s}</text>"##,
        x = width / 2.0,
        t = escape(title),
        s = escape(subtitle),
    );
    for (i, panel) in panels.iter().enumerate() {
        let x0 = PANEL_W * (i % COLUMNS) as f64;
        let y0 = HEADER + PANEL_H * (i / COLUMNS) as f64;
        draw_panel(&mut out, panel, x0, y0);
    }
    out.push_str("</svg>\n");
    out
}

fn draw_panel(out: &mut String, panel: &Panel, x0: f64, y0: f64) {
    let points = || {
        panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|&(x, y)| usable(x) && usable(y))
    };
    let (left, top) = (x0 + MARGIN_LEFT, y0 + MARGIN_TOP);
    let (w, h) = (
        PANEL_W - MARGIN_LEFT - MARGIN_RIGHT,
        PANEL_H - MARGIN_TOP - MARGIN_BOTTOM,
    );
    let _ = writeln!(
        out,
        r##"<text x="{cx}" y="{ty}" font-size="14" text-anchor="middle">{title}</text>
<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999999"/>
<text x="{cx}" y="{xl}" text-anchor="middle">{x_label}</text>
<text transform="translate({yx},{cy}) rotate(-90)" text-anchor="middle">{y_label}</text>"##,
        cx = left + w / 2.0,
        ty = y0 + 22.0,
        xl = top + h + 36.0,
        yx = x0 + 14.0,
        cy = top + h / 2.0,
        title = escape(&panel.title),
        x_label = escape(&panel.x_label),
        y_label = escape(&panel.y_label),
    );
    let (Some(xs), Some(ys)) = (
        LogAxis::fit(points().map(|p| p.0)),
        LogAxis::fit(points().map(|p| p.1)),
    ) else {
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" fill="#999999" text-anchor="middle">no data</text>"##,
            left + w / 2.0,
            top + h / 2.0
        );
        return;
    };
    let px = |x: f64| left + xs.position(x) * w;
    let py = |y: f64| top + h - ys.position(y) * h;
    for tick in xs.ticks() {
        let x = px(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{b}" stroke="#eeeeee"/><text x="{x:.1}" y="{ty}" text-anchor="middle">{l}</text>"##,
            b = top + h,
            ty = top + h + 16.0,
            l = si(tick),
        );
    }
    for tick in ys.ticks() {
        let y = py(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{y:.1}" x2="{r}" y2="{y:.1}" stroke="#eeeeee"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{l}</text>"##,
            r = left + w,
            tx = left - 6.0,
            ty = y + 4.0,
            l = si(tick),
        );
    }
    for (i, series) in panel.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = series
            .points
            .iter()
            .filter(|&&(x, y)| usable(x) && usable(y))
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(out, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
        }
        let ly = top + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{a}" y1="{y}" x2="{b}" y2="{y}" stroke="{color}" stroke-width="2"/><text x="{t}" y="{ty}">{label}</text>"#,
            a = left + 8.0,
            b = left + 24.0,
            y = ly,
            t = left + 30.0,
            ty = ly + 4.0,
            label = escape(&series.label),
        );
    }
}

fn usable(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

/// A base-10 logarithmic axis over whole decades.
#[derive(Clone, Copy, Debug, PartialEq)]
struct LogAxis {
    low: i32,
    high: i32,
}

impl LogAxis {
    /// The smallest run of whole decades holding every usable value.
    fn fit(values: impl Iterator<Item = f64>) -> Option<Self> {
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| usable(*v)) {
            min = min.min(v);
            max = max.max(v);
        }
        if min > max {
            return None;
        }
        let low = min.log10().floor() as i32;
        let high = (max.log10().ceil() as i32).max(low + 1);
        Some(LogAxis { low, high })
    }

    /// Where `v` falls, 0.0 at the low end and 1.0 at the high end.
    fn position(self, v: f64) -> f64 {
        (v.log10() - f64::from(self.low)) / f64::from(self.high - self.low)
    }

    /// Each decade, plus 2× and 5× when the axis spans at most two decades.
    fn ticks(self) -> Vec<f64> {
        let steps: &[f64] = if self.high - self.low <= 2 {
            &[1.0, 2.0, 5.0]
        } else {
            &[1.0]
        };
        let mut ticks = Vec::new();
        for e in self.low..=self.high {
            for m in steps {
                let v = m * 10f64.powi(e);
                if self.position(v) <= 1.0 + 1e-9 {
                    ticks.push(v);
                }
            }
        }
        ticks
    }
}

/// `1500` as `1.5k`, `0.02` as `0.02`.
fn si(v: f64) -> String {
    let (scaled, unit) = match v {
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    let text = format!("{scaled:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{unit}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_cover_whole_decades_and_map_in_order() {
        let axis = LogAxis::fit([3.0, 40.0, 2000.0].into_iter()).expect("values");
        assert_eq!(axis, LogAxis { low: 0, high: 4 });
        assert_eq!(axis.ticks(), vec![1.0, 10.0, 100.0, 1000.0, 10000.0]);
        assert!(axis.position(3.0) < axis.position(40.0));
        assert!((axis.position(1.0)).abs() < 1e-12 && (axis.position(1e4) - 1.0).abs() < 1e-12);
        let narrow = LogAxis::fit([100.0].into_iter()).expect("one value");
        assert_eq!(narrow, LogAxis { low: 2, high: 3 });
        assert_eq!(narrow.ticks(), vec![100.0, 200.0, 500.0, 1000.0]);
        assert_eq!(LogAxis::fit([0.0, -1.0, f64::NAN].into_iter()), None);
    }

    #[test]
    fn labels_are_short() {
        assert_eq!(si(1.0), "1");
        assert_eq!(si(1500.0), "1.5k");
        assert_eq!(si(1_048_576.0), "1.05M");
        assert_eq!(si(0.02), "0.02");
    }

    #[test]
    fn a_chart_draws_each_series_and_escapes_text() {
        let panel = Panel {
            title: "names <per> call".into(),
            x_label: "names".into(),
            y_label: "µs".into(),
            series: vec![
                Series {
                    label: "get_state".into(),
                    points: vec![(1.0, 10.0), (10.0, 20.0), (100.0, 0.0)],
                },
                Series {
                    label: "set & get".into(),
                    points: vec![(1.0, 5.0)],
                },
            ],
        };
        let empty = Panel {
            series: Vec::new(),
            ..panel.clone()
        };
        let svg = svg("t", "s", &[panel, empty]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(
            svg.matches("<circle").count(),
            3,
            "a zero is not drawn on a log axis"
        );
        assert!(svg.contains("names &lt;per&gt; call") && svg.contains("set &amp; get"));
        assert!(svg.contains("no data"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}

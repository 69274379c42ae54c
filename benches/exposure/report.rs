//! The table: one row per figure, with what it is compared to, the ratio and whether the target is met.

use std::time::Duration;

/// One line of the table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub figure: String,
    pub value: String,
    pub reference: String,
    pub ratio: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A row without a target.
pub fn info(figure: impl Into<String>, value: impl Into<String>) -> Row {
    Row {
        figure: figure.into(),
        value: value.into(),
        reference: String::new(),
        ratio: None,
        target: String::new(),
        met: None,
    }
}

/// What a row's ratio must meet.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// At or below the bound: a cost against its floor.
    AtMost(f64),
    /// At or above the bound: a rate against its floor.
    AtLeast(f64),
}

/// A row comparing `value` with `reference` by `ratio`, which must meet `target`.
pub fn compared(
    figure: impl Into<String>,
    value: impl Into<String>,
    reference: impl Into<String>,
    ratio: f64,
    target: Target,
) -> Row {
    let (target, met) = match target {
        Target::AtMost(max) => (format!("<= {max}"), ratio <= max),
        Target::AtLeast(min) => (format!(">= {min}"), ratio >= min),
    };
    Row {
        figure: figure.into(),
        value: value.into(),
        reference: reference.into(),
        ratio: Some(ratio),
        target,
        met: Some(met),
    }
}

/// A row whose value itself has a bound (no reference).
pub fn bound(figure: impl Into<String>, value: f64, unit: &str, target: String, met: bool) -> Row {
    Row {
        figure: figure.into(),
        value: format!("{value:.1} {unit}"),
        reference: String::new(),
        ratio: None,
        target,
        met: Some(met),
    }
}

/// The table as Markdown, ready to paste into BENCHMARKS.md.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| figure | value | compared with | ratio | target | met |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let ratio = r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default();
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.figure, r.value, r.reference, ratio, r.target, met
        ));
    }
    out
}

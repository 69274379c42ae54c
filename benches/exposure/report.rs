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

/// A row whose ratio must stay at or below `max`.
pub fn at_most(
    figure: impl Into<String>,
    value: impl Into<String>,
    reference: impl Into<String>,
    ratio: f64,
    max: f64,
) -> Row {
    compared(
        figure,
        value,
        reference,
        ratio,
        format!("<= {max}"),
        ratio <= max,
    )
}

/// A row whose ratio must reach at least `min`.
pub fn at_least(
    figure: impl Into<String>,
    value: impl Into<String>,
    reference: impl Into<String>,
    ratio: f64,
    min: f64,
) -> Row {
    compared(
        figure,
        value,
        reference,
        ratio,
        format!(">= {min}"),
        ratio >= min,
    )
}

fn compared(
    figure: impl Into<String>,
    value: impl Into<String>,
    reference: impl Into<String>,
    ratio: f64,
    target: String,
    met: bool,
) -> Row {
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

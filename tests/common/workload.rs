//! Test-side helpers for `ledgerd::loadgen` workloads.

#[allow(unused_imports)] // Not every test binary uses every helper.
pub use ledgerd::loadgen::{generate, Shape, Workload};

/// Parses a decimal string from the API to exact cents; panics on more than two non-zero decimals.
pub fn to_cents(text: &str) -> i128 {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (units, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let frac_trimmed = frac.trim_end_matches('0');
    assert!(frac_trimmed.len() <= 2, "{text} has sub-cent digits");
    let cents =
        units.parse::<i128>().expect("units") * 100 + format!("{frac_trimmed:0<2}").parse::<i128>().expect("cents");
    if negative {
        -cents
    } else {
        cents
    }
}

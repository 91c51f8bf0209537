//! Exact decimal money: parsing from text and JSON number literals, checked arithmetic.
//!
//! Amounts are `rust_decimal::Decimal` (96-bit mantissa, scale 0..=28). Parsing is exact or an error:
//! a literal that cannot be represented without rounding (too many digits, exponent out of range)
//! is rejected rather than silently rounded, and arithmetic that would overflow is an error, never a
//! wrap. No floating point is involved anywhere on this path.

use rust_decimal::Decimal;
use std::fmt;
use std::str::FromStr;

/// Largest scale (digits after the point) a `Decimal` can hold.
const MAX_SCALE: u32 = 28;

/// A signed, exact amount of money in one currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(Decimal);

/// Why a literal is not an exact amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount is empty")]
    Empty,
    #[error("amount {0:?} is not a decimal number")]
    Syntax(String),
    #[error("amount {0:?} cannot be represented exactly (more than 28 significant digits or out of range)")]
    OutOfRange(String),
    #[error("arithmetic overflow")]
    Overflow,
}

impl Amount {
    pub const ZERO: Amount = Amount(Decimal::ZERO);

    pub fn from_decimal(value: Decimal) -> Self {
        Amount(value)
    }

    pub fn as_decimal(&self) -> Decimal {
        self.0
    }

    /// Parses a decimal literal exactly: `-1299.00`, `5000`, `1e2`, `1.5E-3`, `+7`.
    ///
    /// The scale of the literal is kept (`5000.00` stays `5000.00`); an exponent shifts it.
    pub fn parse(text: &str) -> Result<Self, AmountError> {
        let text = super::trim(text);
        if text.is_empty() {
            return Err(AmountError::Empty);
        }
        let bytes = text.as_bytes();
        let (negative, rest) = match bytes[0] {
            b'-' => (true, &bytes[1..]),
            b'+' => (false, &bytes[1..]),
            _ => (false, bytes),
        };
        let (mantissa_part, exponent_part) = match rest.iter().position(|&b| b == b'e' || b == b'E') {
            Some(at) => (&rest[..at], Some(&rest[at + 1..])),
            None => (rest, None),
        };
        if exponent_part.is_none() {
            if let Some(amount) = plain_decimal(mantissa_part, negative) {
                return Ok(amount);
            }
        }
        Amount::parse_general(text, negative, mantissa_part, exponent_part)
    }

    /// Any literal [`Amount::parse`] accepts, its sign already split off and its exponent (after
    /// `e` or `E`) from its mantissa.
    fn parse_general(
        text: &str,
        negative: bool,
        mantissa_part: &[u8],
        exponent_part: Option<&[u8]>,
    ) -> Result<Self, AmountError> {
        let syntax = || AmountError::Syntax(text.to_owned());
        let range = || AmountError::OutOfRange(text.to_owned());

        // Accumulate all digits into one integer mantissa; count digits after the point.
        let mut mantissa: i128 = 0;
        let mut fraction_digits: i64 = 0;
        let mut seen_point = false;
        let mut digit_count = 0usize;
        for &b in mantissa_part {
            match b {
                b'0'..=b'9' => {
                    digit_count += 1;
                    mantissa =
                        mantissa.checked_mul(10).and_then(|m| m.checked_add(i128::from(b - b'0'))).ok_or_else(range)?;
                    if seen_point {
                        fraction_digits += 1;
                    }
                }
                b'.' if !seen_point => seen_point = true,
                _ => return Err(syntax()),
            }
        }
        if digit_count == 0 {
            return Err(syntax());
        }

        let exponent: i64 = match exponent_part {
            None => 0,
            Some(digits) => {
                let digits = std::str::from_utf8(digits).map_err(|_| syntax())?;
                let valid = !digits.is_empty()
                    && digits.trim_start_matches(['+', '-']).bytes().all(|b| b.is_ascii_digit())
                    && digits.len() - digits.trim_start_matches(['+', '-']).len() <= 1;
                if !valid {
                    return Err(syntax());
                }
                // Absurd exponents are out of range whatever the mantissa.
                digits.parse::<i64>().map_err(|_| range())?
            }
        };

        // value = mantissa * 10^(exponent - fraction_digits)
        let mut scale = fraction_digits.checked_sub(exponent).ok_or_else(range)?;
        if scale < 0 {
            let shift = u32::try_from(-scale).map_err(|_| range())?;
            if mantissa != 0 {
                let factor = 10i128.checked_pow(shift).ok_or_else(range)?;
                mantissa = mantissa.checked_mul(factor).ok_or_else(range)?;
            }
            scale = 0;
        }
        // Trailing zeros beyond what a Decimal can hold carry no value: drop them exactly.
        while scale > i64::from(MAX_SCALE) && mantissa % 10 == 0 {
            mantissa /= 10;
            scale -= 1;
        }
        if scale > i64::from(MAX_SCALE) {
            return Err(range());
        }
        if negative {
            mantissa = -mantissa;
        }
        Decimal::try_from_i128_with_scale(mantissa, scale as u32).map(Amount).map_err(|_| range())
    }

    pub fn checked_add(self, other: Amount) -> Result<Amount, AmountError> {
        self.0.checked_add(other.0).map(Amount).ok_or(AmountError::Overflow)
    }

    pub fn checked_sub(self, other: Amount) -> Result<Amount, AmountError> {
        self.0.checked_sub(other.0).map(Amount).ok_or(AmountError::Overflow)
    }

    pub fn negate(self) -> Amount {
        Amount(-self.0)
    }

    pub fn is_positive(&self) -> bool {
        self.0.is_sign_positive() && !self.0.is_zero()
    }

    /// The 16-byte fixed encoding used in storage.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.serialize()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Amount {
        Amount(Decimal::deserialize(bytes))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Amount {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Amount::parse(s)
    }
}

/// The common literal: at most 18 digits (so they fit an i64 unchecked), at most one point, no
/// exponent, its sign split off. Parsed without the general path's i128 overflow checks: parsing
/// the engine's amounts took 3.5 times as many instructions with them (callgrind). `None` for
/// anything else, which the general path then parses or rejects.
fn plain_decimal(text: &[u8], negative: bool) -> Option<Amount> {
    let mut mantissa: i64 = 0;
    let mut digits = 0u32;
    let mut digits_before_point = None;
    for &b in text {
        match b {
            b'0'..=b'9' if digits < 18 => {
                mantissa = mantissa * 10 + i64::from(b - b'0');
                digits += 1;
            }
            b'.' if digits_before_point.is_none() => digits_before_point = Some(digits),
            _ => return None,
        }
    }
    if digits == 0 {
        return None;
    }
    let scale = digits - digits_before_point.unwrap_or(digits);
    Decimal::try_new(if negative { -mantissa } else { mantissa }, scale).ok().map(Amount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn amount(text: &str) -> Amount {
        Amount::parse(text).unwrap()
    }

    #[test]
    fn keeps_the_literal_scale() {
        assert_eq!(amount("5000.00").to_string(), "5000.00");
        assert_eq!(amount("-1299.00").to_string(), "-1299.00");
        assert_eq!(amount("+7").to_string(), "7");
        assert_eq!(amount(" 0.10 ").to_string(), "0.10");
        assert_eq!(amount(".5").to_string(), "0.5");
        assert_eq!(amount("5.").to_string(), "5");
    }

    #[test]
    fn point_one_plus_point_two_is_exactly_point_three() {
        let sum = amount("0.1").checked_add(amount("0.2")).unwrap();
        assert_eq!(sum, amount("0.3"));
        assert_eq!(sum.to_string(), "0.3");
    }

    #[test]
    fn seed_balance_is_exact() {
        let balance = amount("5000.00").checked_add(amount("-1299.00")).unwrap();
        assert_eq!(balance.to_string(), "3701.00");
    }

    #[test]
    fn exponents_are_exact() {
        assert_eq!(amount("1e2"), amount("100"));
        assert_eq!(amount("1E2").to_string(), "100");
        assert_eq!(amount("1.5e-3").to_string(), "0.0015");
        assert_eq!(amount("-2.50E+1"), amount("-25"));
        assert_eq!(amount("0e999999"), Amount::ZERO);
        assert_eq!(amount("1000e-30").to_string(), "0.0000000000000000000000000010");
    }

    #[test]
    fn huge_values_are_rejected_not_rounded() {
        // 29 significant digits: does not fit 96 bits exactly.
        assert!(matches!(Amount::parse("99999999999999999999999999999"), Err(AmountError::OutOfRange(_))));
        assert!(matches!(Amount::parse("1e29"), Err(AmountError::OutOfRange(_))));
        assert!(matches!(Amount::parse("1e-29"), Err(AmountError::OutOfRange(_))));
        assert!(matches!(Amount::parse("0.12345678901234567890123456789"), Err(AmountError::OutOfRange(_))));
        assert!(matches!(Amount::parse("1e99999999999999999999"), Err(AmountError::OutOfRange(_))));
        // The largest exact value still parses.
        assert_eq!(amount("79228162514264337593543950335").to_string(), "79228162514264337593543950335");
    }

    #[test]
    fn overflow_is_an_error() {
        let max = amount("79228162514264337593543950335");
        assert_eq!(max.checked_add(amount("1")), Err(AmountError::Overflow));
        assert_eq!(max.negate().checked_sub(amount("1")), Err(AmountError::Overflow));
    }

    #[test]
    fn garbage_is_a_syntax_error() {
        for bad in ["abc", "1.2.3", "--1", "1e", "e5", "1e+-2", "NaN", "inf", "1,5", "0x10", "-", "."] {
            assert!(matches!(Amount::parse(bad), Err(AmountError::Syntax(_))), "{bad}");
        }
        assert_eq!(Amount::parse("  "), Err(AmountError::Empty));
    }

    #[test]
    fn storage_bytes_round_trip() {
        let a = amount("-1234.5600");
        assert_eq!(Amount::from_bytes(a.to_bytes()), a);
        assert_eq!(Amount::from_bytes(a.to_bytes()).to_string(), "-1234.5600");
    }

    proptest! {
        /// Integer cents parsed as "units.cc" add up exactly like integer arithmetic.
        #[test]
        fn sums_match_integer_cents(cents in proptest::collection::vec(-10_000_000_000i64..10_000_000_000, 1..50)) {
            let mut total = Amount::ZERO;
            for c in &cents {
                let text = format!("{}{}.{:02}", if *c < 0 { "-" } else { "" }, c.unsigned_abs() / 100, c.unsigned_abs() % 100);
                total = total.checked_add(amount(&text)).unwrap();
            }
            let expected: i128 = cents.iter().map(|c| i128::from(*c)).sum();
            prop_assert_eq!(total.as_decimal(), Decimal::from_i128_with_scale(expected, 2));
        }

        /// The plain-literal path gives what the general path gives, value, scale and sign, for
        /// literals of up to 22 digits (past its 18) with points and signs anywhere.
        #[test]
        fn plain_literals_parse_as_the_general_path_parses_them(text in "[+-]?[0-9.]{0,22}") {
            let bytes = text.as_bytes();
            let (negative, rest) = match bytes.first() {
                Some(b'-') => (true, &bytes[1..]),
                Some(b'+') => (false, &bytes[1..]),
                _ => (false, bytes),
            };
            let general = Amount::parse_general(&text, negative, rest, None);
            match plain_decimal(rest, negative) {
                Some(plain) => prop_assert_eq!(Ok(plain.to_bytes()), general.map(Amount::to_bytes)),
                None => prop_assert!(general.is_err() || rest.iter().filter(|b| b.is_ascii_digit()).count() > 18),
            }
        }

        /// Display then parse gives back the same value and scale.
        #[test]
        fn display_round_trips(mantissa in any::<i64>(), scale in 0u32..=18) {
            let original = Amount::from_decimal(Decimal::new(mantissa, scale));
            let reparsed = amount(&original.to_string());
            prop_assert_eq!(reparsed, original);
            prop_assert_eq!(reparsed.to_string(), original.to_string());
        }
    }
}

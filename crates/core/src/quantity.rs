//! Exact quantities: decimal parsing, unit conversion and the EPA discrepancy rule.
//!
//! Quantities travel as decimal strings so that no floating point ever enters signed bytes or a
//! consensus decision. Here they become integers: an [`Amount`] counts millionths of the unit,
//! and comparisons across units of one dimension use exact integer conversion factors.

use std::fmt;

use crate::pb::{ContainerType, QuantityUnit};

/// Most digits allowed after the decimal point.
pub const MAX_FRACTION_DIGITS: usize = 6;
/// Largest whole-unit amount accepted (a trillion units is far beyond any real shipment).
pub const MAX_WHOLE_UNITS: u64 = 1_000_000_000_000;
const MICROS: u64 = 1_000_000;

/// A non-negative quantity in millionths of its unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(pub u64);

/// Why a quantity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Empty amount.
    #[error("quantity amount is empty; write a decimal such as \"12.5\"")]
    Empty,
    /// Characters other than digits and one point.
    #[error(
        "quantity amount {0:?} is not a plain decimal (digits with at most one '.', no sign, exponent or separators)"
    )]
    Syntax(String),
    /// More than [`MAX_FRACTION_DIGITS`] digits after the point.
    #[error("quantity amount {0:?} has more than 6 digits after the decimal point")]
    TooPrecise(String),
    /// Larger than [`MAX_WHOLE_UNITS`].
    #[error("quantity amount {0:?} exceeds the maximum of 1000000000000 units")]
    TooLarge(String),
    /// Zero where a positive quantity is required.
    #[error("quantity must be greater than zero")]
    NotPositive,
    /// Unit missing or unknown.
    #[error("quantity unit is missing or unknown; use one of P, T, K, M, G, L, Y, N")]
    Unit,
}

impl Amount {
    /// Parses a plain decimal: `"12"`, `"12.5"`, `"0.000001"`. Leading zeros are allowed
    /// (`"007"`), signs, exponents, spaces and thousands separators are not.
    pub fn parse(text: &str) -> Result<Amount, QuantityError> {
        if text.is_empty() {
            return Err(QuantityError::Empty);
        }
        let (whole, fraction) = match text.split_once('.') {
            Some((w, f)) => (w, f),
            None => (text, ""),
        };
        let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits_only(whole) || !digits_only(fraction) {
            return Err(QuantityError::Syntax(text.to_owned()));
        }
        if text.contains('.') && fraction.is_empty() {
            return Err(QuantityError::Syntax(text.to_owned()));
        }
        if fraction.len() > MAX_FRACTION_DIGITS {
            return Err(QuantityError::TooPrecise(text.to_owned()));
        }
        let whole_value: u64 = whole
            .trim_start_matches('0')
            .parse::<u64>()
            .or_else(|_| {
                if whole.bytes().all(|b| b == b'0') {
                    Ok(0)
                } else {
                    Err(())
                }
            })
            .map_err(|()| QuantityError::TooLarge(text.to_owned()))?;
        if whole_value > MAX_WHOLE_UNITS {
            return Err(QuantityError::TooLarge(text.to_owned()));
        }
        let mut fraction_value: u64 = 0;
        for (i, b) in fraction.bytes().enumerate() {
            fraction_value += u64::from(b - b'0') * 10u64.pow((MAX_FRACTION_DIGITS - 1 - i) as u32);
        }
        Ok(Amount(whole_value * MICROS + fraction_value))
    }

    /// True when the amount is zero.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / MICROS;
        let fraction = self.0 % MICROS;
        if fraction == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{fraction:06}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

/// The physical dimension of a unit; only amounts of one dimension can be compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    /// Pounds, tons, kilograms, tonnes.
    Mass,
    /// Gallons, litres, cubic yards, cubic metres.
    Volume,
}

/// A validated quantity: amount, unit and whether it is an estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measured {
    /// The amount in millionths of `unit`.
    pub amount: Amount,
    /// The unit of measure.
    pub unit: QuantityUnit,
    /// Marked as an estimate by whoever recorded it.
    pub estimated: bool,
}

impl Measured {
    /// Validates a wire quantity; `positive` requires a non-zero amount.
    pub fn from_pb(q: &crate::pb::Quantity, positive: bool) -> Result<Measured, QuantityError> {
        let unit = QuantityUnit::try_from(q.unit).map_err(|_| QuantityError::Unit)?;
        if unit == QuantityUnit::Unspecified {
            return Err(QuantityError::Unit);
        }
        let amount = Amount::parse(&q.amount)?;
        if positive && amount.is_zero() {
            return Err(QuantityError::NotPositive);
        }
        Ok(Measured {
            amount,
            unit,
            estimated: q.estimated,
        })
    }

    /// The amount in the dimension's base unit (kilograms or litres), scaled by 10^15
    /// (10^6 for the amount's micro-units times 10^9 for the exact conversion factor).
    pub fn base_units(&self) -> (Dimension, u128) {
        let (dimension, factor) = unit_factor(self.unit);
        (dimension, u128::from(self.amount.0) * u128::from(factor))
    }
}

impl fmt::Display for Measured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, unit_code(self.unit))?;
        if self.estimated {
            f.write_str(" (est.)")?;
        }
        Ok(())
    }
}

/// The EPA one-letter code of a unit.
pub fn unit_code(unit: QuantityUnit) -> &'static str {
    match unit {
        QuantityUnit::Pounds => "P",
        QuantityUnit::ShortTons => "T",
        QuantityUnit::Kilograms => "K",
        QuantityUnit::MetricTonnes => "M",
        QuantityUnit::Gallons => "G",
        QuantityUnit::Litres => "L",
        QuantityUnit::CubicYards => "Y",
        QuantityUnit::CubicMetres => "N",
        QuantityUnit::Unspecified => "?",
    }
}

/// Exact conversion to kilograms or litres, in billionths (all factors are exact by definition:
/// 1 lb = 0.45359237 kg, 1 US gal = 3.785411784 L, 1 yd³ = 764.554857984 L).
fn unit_factor(unit: QuantityUnit) -> (Dimension, u64) {
    match unit {
        QuantityUnit::Pounds => (Dimension::Mass, 453_592_370),
        QuantityUnit::ShortTons => (Dimension::Mass, 907_184_740_000),
        QuantityUnit::Kilograms => (Dimension::Mass, 1_000_000_000),
        QuantityUnit::MetricTonnes => (Dimension::Mass, 1_000_000_000_000),
        QuantityUnit::Gallons => (Dimension::Volume, 3_785_411_784),
        QuantityUnit::Litres | QuantityUnit::Unspecified => (Dimension::Volume, 1_000_000_000),
        QuantityUnit::CubicYards => (Dimension::Volume, 764_554_857_984),
        QuantityUnit::CubicMetres => (Dimension::Volume, 1_000_000_000_000),
    }
}

/// Bulk containers are judged by weight, batch containers by piece count (40 CFR 264.72).
pub fn is_bulk(container: ContainerType) -> bool {
    matches!(
        container,
        ContainerType::Dt
            | ContainerType::Hg
            | ContainerType::Tc
            | ContainerType::Tp
            | ContainerType::Tt
    )
}

/// The verdict on one line's received quantity against the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineDiscrepancy {
    /// The waste line.
    pub line_number: u32,
    /// Received minus shipped, in basis points of the shipped quantity (None when the units
    /// cannot be compared).
    pub deviation_bp: Option<i64>,
    /// Pieces received minus pieces shipped.
    pub piece_difference: i64,
    /// The facility reported that the waste is not what the manifest describes.
    pub type_discrepancy: bool,
    /// Shipped and received were measured in different dimensions (mass vs volume).
    pub incomparable_units: bool,
    /// Significant under the EPA rule: bulk weight off by more than 10 %, any piece-count
    /// difference for batch waste, or a type discrepancy.
    pub significant: bool,
}

impl LineDiscrepancy {
    /// True when anything at all differs.
    pub fn any(&self) -> bool {
        self.significant || self.piece_difference != 0 || self.deviation_bp.is_some_and(|d| d != 0)
    }
}

/// Compares one received line with the shipped line (EPA significance rule).
pub fn compare_line(
    line_number: u32,
    container: ContainerType,
    shipped: &Measured,
    shipped_pieces: u32,
    received: &Measured,
    received_pieces: u32,
    type_discrepancy: bool,
) -> LineDiscrepancy {
    let (shipped_dim, shipped_base) = shipped.base_units();
    let (received_dim, received_base) = received.base_units();
    let incomparable_units = shipped_dim != received_dim;
    let deviation_bp = if incomparable_units || shipped_base == 0 {
        None
    } else {
        let diff = received_base as i128 - shipped_base as i128;
        i64::try_from(diff * 10_000 / shipped_base as i128).ok()
    };
    // "More than 10 %" compared exactly: |received - shipped| * 10 > shipped.
    let weight_off =
        !incomparable_units && received_base.abs_diff(shipped_base) * 10 > shipped_base;
    let piece_difference = i64::from(received_pieces) - i64::from(shipped_pieces);
    let bulk = is_bulk(container);
    let significant = type_discrepancy
        || if bulk {
            weight_off || incomparable_units
        } else {
            piece_difference != 0
        };
    LineDiscrepancy {
        line_number,
        deviation_bp,
        piece_difference,
        type_discrepancy,
        incomparable_units,
        significant,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(amount: &str, unit: QuantityUnit) -> Measured {
        Measured {
            amount: Amount::parse(amount).unwrap(),
            unit,
            estimated: false,
        }
    }

    #[test]
    fn parses_plain_decimals() {
        assert_eq!(Amount::parse("12"), Ok(Amount(12_000_000)));
        assert_eq!(Amount::parse("12.5"), Ok(Amount(12_500_000)));
        assert_eq!(Amount::parse("0.000001"), Ok(Amount(1)));
        assert_eq!(Amount::parse("007"), Ok(Amount(7_000_000)));
        assert_eq!(Amount::parse("0"), Ok(Amount(0)));
        assert_eq!(
            Amount::parse("1000000000000"),
            Ok(Amount(MAX_WHOLE_UNITS * MICROS))
        );
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "-1", "+1", "1e3", "1,000", " 1", "1 ", ".5", "5.", "1.2.3", "abc", "0x10", "١",
        ] {
            assert!(
                matches!(Amount::parse(bad), Err(QuantityError::Syntax(_))),
                "{bad:?} was accepted"
            );
        }
        assert_eq!(Amount::parse(""), Err(QuantityError::Empty));
        assert!(matches!(
            Amount::parse("1.0000001"),
            Err(QuantityError::TooPrecise(_))
        ));
        assert!(matches!(
            Amount::parse("1000000000001"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            Amount::parse("99999999999999999999999"),
            Err(QuantityError::TooLarge(_))
        ));
    }

    #[test]
    fn bulk_weight_rule_is_strictly_more_than_ten_percent() {
        let shipped = m("1000", QuantityUnit::Kilograms);
        let exactly_ten = compare_line(
            1,
            ContainerType::Tt,
            &shipped,
            1,
            &m("1100", QuantityUnit::Kilograms),
            1,
            false,
        );
        assert!(!exactly_ten.significant);
        assert_eq!(exactly_ten.deviation_bp, Some(1000));
        let over = compare_line(
            1,
            ContainerType::Tt,
            &shipped,
            1,
            &m("1100.001", QuantityUnit::Kilograms),
            1,
            false,
        );
        assert!(over.significant);
        let under = compare_line(
            1,
            ContainerType::Tt,
            &shipped,
            1,
            &m("899.999", QuantityUnit::Kilograms),
            1,
            false,
        );
        assert!(under.significant);
    }

    #[test]
    fn units_convert_exactly() {
        // 1 short ton = 2000 lb exactly.
        let d = compare_line(
            1,
            ContainerType::Tt,
            &m("1", QuantityUnit::ShortTons),
            1,
            &m("2000", QuantityUnit::Pounds),
            1,
            false,
        );
        assert_eq!(d.deviation_bp, Some(0));
        let d = compare_line(
            1,
            ContainerType::Tt,
            &m("1", QuantityUnit::CubicMetres),
            1,
            &m("1000", QuantityUnit::Litres),
            1,
            false,
        );
        assert_eq!(d.deviation_bp, Some(0));
        let d = compare_line(
            1,
            ContainerType::Tt,
            &m("1", QuantityUnit::MetricTonnes),
            1,
            &m("1000", QuantityUnit::Litres),
            1,
            false,
        );
        assert!(d.incomparable_units && d.significant);
    }

    #[test]
    fn batch_waste_is_judged_by_piece_count() {
        let q = m("500", QuantityUnit::Kilograms);
        let heavy = m("600", QuantityUnit::Kilograms);
        assert!(!compare_line(1, ContainerType::Dm, &q, 4, &heavy, 4, false).significant);
        assert!(compare_line(1, ContainerType::Dm, &q, 4, &q, 3, false).significant);
        assert!(compare_line(1, ContainerType::Dm, &q, 4, &q, 4, true).significant);
    }

    proptest! {
        #[test]
        fn display_round_trips(micros in 0u64..=MAX_WHOLE_UNITS * MICROS) {
            let a = Amount(micros);
            prop_assert_eq!(Amount::parse(&a.to_string()), Ok(a));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = Amount::parse(&s);
        }
    }
}

//! The two transcendental functions the cost policies need; `core` has neither.

/// `e^-x` for `x >= 0`, relative error below 2e-5 (Taylor series on `[0, ln 2)` times a power of 2).
pub(crate) fn exp_neg(x: f32) -> f32 {
    if x.is_nan() || x <= 0.0 {
        return 1.0; // also NaN
    }
    if x < 0.01 {
        // The common case on a busy endpoint (ms since the last sample over a 10 s decay):
        // three Taylor terms, error below x^3/6 < 2e-7.
        return 1.0 - x * (1.0 - 0.5 * x);
    }
    if x > 87.0 {
        return 0.0;
    }
    const LN2: f32 = core::f32::consts::LN_2;
    let n = (x / LN2) as u32; // floor, x > 0
    let t = x - n as f32 * LN2; // in [0, ln 2)
    let poly = 1.0
        - t * (1.0
            - t * (0.5
                - t * (1.0 / 6.0 - t * (1.0 / 24.0 - t * (1.0 / 120.0 - t * (1.0 / 720.0 - t / 5040.0))))));
    // 2^-n: build the float directly from its exponent bits (n <= 125 here).
    poly * f32::from_bits((127 - n) << 23)
}

/// Square root of a non-negative `f32` (bit-level estimate, then three Newton steps).
pub(crate) fn sqrt(x: f32) -> f32 {
    if x.is_nan() || x <= 0.0 {
        return 0.0;
    }
    let mut y = f32::from_bits((x.to_bits() >> 1) + 0x1fbd_1df5);
    for _ in 0..3 {
        y = 0.5 * (y + x / y);
    }
    y
}

/// `f64::ceil` for non-negative values (not in `core`).
pub(crate) fn ceil(x: f64) -> f64 {
    if x >= 4_503_599_627_370_496.0 {
        return x; // 2^52 and above: already whole
    }
    let t = x as u64 as f64;
    if t < x {
        t + 1.0
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_neg_is_accurate() {
        let mut x = 0.0f32;
        while x < 80.0 {
            let (got, want) = (exp_neg(x), (-x).exp());
            assert!(((got - want) / want).abs() < 2e-5, "x={x} got={got} want={want}");
            x += 0.037;
        }
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(1e9), 0.0);
        assert_eq!(exp_neg(f32::NAN), 1.0);
    }

    #[test]
    fn ceil_matches_std() {
        for x in [0.0, 0.5, 1.0, 1.0000001, 2.9999, 12.0, 1e15 + 0.5, 1e300] {
            assert_eq!(ceil(x), x.ceil(), "{x}");
        }
    }

    #[test]
    fn sqrt_is_accurate() {
        for x in [1e-6f32, 0.5, 1.0, 2.0, 1e3, 1e9, 3.4e38] {
            assert!(((sqrt(x) - x.sqrt()) / x.sqrt()).abs() < 1e-6, "{x}");
        }
        assert_eq!(sqrt(0.0), 0.0);
        assert_eq!(sqrt(-1.0), 0.0);
    }
}

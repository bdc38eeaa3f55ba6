//! The truncated normal distribution in log space: what TPE's kernels are. Log space throughout,
//! because a kernel far from a point has a density that underflows long before its logarithm
//! matters (the expected-improvement ratio compares exactly those tails). Branches follow the
//! standard numerics (left tail through log Phi, the right tail by symmetry, an asymptotic series
//! below -20), which is also how Optuna computes them: the parity tests hold to 1e-9.
use std::f64::consts::{PI, SQRT_2};

/// ln(sqrt(2 pi)).
const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;

/// Phi(x), the standard normal CDF, through erfc where erf would lose the tail.
pub fn ndtr(x: f64) -> f64 {
    let t = x / SQRT_2;
    if t < -std::f64::consts::FRAC_1_SQRT_2 {
        0.5 * libm::erfc(-t)
    } else if t < std::f64::consts::FRAC_1_SQRT_2 {
        0.5 + 0.5 * libm::erf(t)
    } else {
        1.0 - 0.5 * libm::erfc(t)
    }
}

/// ln Phi(x), accurate in both tails.
pub fn log_ndtr(x: f64) -> f64 {
    if x > 6.0 {
        // ln(1 - e) ~ -e for the tiny e = Phi(-x).
        return -ndtr(-x);
    }
    if x > -20.0 {
        return ndtr(x).ln();
    }
    // Phi(x) = phi(x)/(-x) * (1 - 1/x^2 + 3/x^4 - 15/x^6 ...), summed until it stops changing.
    let lead = -0.5 * x * x - (-x).ln() - LN_SQRT_2PI;
    let (mut sum, mut term, inv_x2) = (1.0f64, 1.0f64, 1.0 / (x * x));
    for i in 1..200 {
        let before = sum;
        term *= -((2 * i - 1) as f64) * inv_x2;
        sum += term;
        if (sum - before).abs() <= f64::EPSILON {
            break;
        }
    }
    lead + sum.ln()
}

/// ln(e^p - e^q) for p >= q.
fn log_diff(p: f64, q: f64) -> f64 {
    p + (-(q - p).exp()).ln_1p()
}

/// ln of the standard normal's mass on [a, b].
pub fn log_gauss_mass(a: f64, b: f64) -> f64 {
    if b <= 0.0 {
        log_diff(log_ndtr(b), log_ndtr(a))
    } else if a > 0.0 {
        log_diff(log_ndtr(-a), log_ndtr(-b))
    } else {
        // Straddling 0: 1 minus both tails, which cannot cancel badly.
        (-ndtr(a) - ndtr(-b)).ln_1p()
    }
}

/// ln of the density at `x` of N(loc, scale) truncated to [lo, hi] (-inf outside).
pub fn log_pdf(x: f64, lo: f64, hi: f64, loc: f64, scale: f64) -> f64 {
    if x < lo || x > hi {
        return f64::NEG_INFINITY;
    }
    let z = (x - loc) / scale;
    -0.5 * z * z - LN_SQRT_2PI - log_gauss_mass((lo - loc) / scale, (hi - loc) / scale) - scale.ln()
}

/// The x with ln Phi(x) = y (y <= 0), by Newton's method on ln Phi from a closed-form start.
fn ndtri_exp(y: f64) -> f64 {
    // Near 0 the root is far right, where ln Phi is flat: solve for -x in the left tail instead.
    let flipped = y > -1e-2;
    let z = if flipped { (-y.exp_m1()).ln() } else { y };
    let mut x = if z < -5.0 {
        -(-2.0 * (z + LN_SQRT_2PI)).sqrt()
    } else {
        // The logistic approximation of Phi.
        -(3f64.sqrt() / PI) * (-z).exp_m1().ln()
    };
    for _ in 0..100 {
        let lx = log_ndtr(x);
        let step = (lx - z) * (lx + 0.5 * x * x + LN_SQRT_2PI).exp();
        x -= step;
        if step.abs() < 1e-10 * x.abs().max(1e-300) {
            break;
        }
    }
    if flipped {
        -x
    } else {
        x
    }
}

/// The q-quantile (0 <= q < 1) of the standard normal truncated to [a, b]: inverse transform
/// sampling, in log space on whichever side is the left tail.
pub fn ppf(q: f64, a: f64, b: f64) -> f64 {
    let mass = log_gauss_mass(a, b);
    let x = if a < 0.0 {
        ndtri_exp(log_add(log_ndtr(a), q.ln() + mass))
    } else {
        -ndtri_exp(log_add(log_ndtr(-b), (-q).ln_1p() + mass))
    };
    // Rounding must not step outside the truncation.
    if x.is_nan() {
        a
    } else {
        x.clamp(a, b)
    }
}

fn log_add(p: f64, q: f64) -> f64 {
    let m = p.max(q);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((p - m).exp() + (q - m).exp()).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ndtr_is_continuous_across_its_branches_and_right_in_the_tails() {
        for x in [-20.0f64, 6.0] {
            let (l, r) = (log_ndtr(x - 1e-9), log_ndtr(x + 1e-9));
            assert!((l - r).abs() < 1e-6 * l.abs().max(1e-12), "{x}: {l} {r}");
        }
        // Phi(-30) = 4.906713927148187e-198 (tabulated), ln = -454.3212...
        assert!((log_ndtr(-30.0) - 4.906_713_927_148_187e-198f64.ln()).abs() < 1e-9);
        assert!((ndtr(1.0) - 0.841_344_746_068_542_9).abs() < 1e-15);
    }

    #[test]
    fn the_quantile_inverts_the_truncated_cdf() {
        for (a, b) in [(-1.0, 2.0), (-40.0, -35.0), (3.0, 9.0), (-0.5, 0.5)] {
            for q in [1e-6, 0.1, 0.5, 0.9, 0.999_999] {
                let x = ppf(q, a, b);
                assert!((a..=b).contains(&x), "{a} {b} {q}: {x}");
                // The mass to the left of x is q of the whole.
                let left = (log_gauss_mass(a, x) - log_gauss_mass(a, b)).exp();
                assert!((left - q).abs() < 1e-7, "{a} {b} {q}: {left}");
            }
        }
    }
}

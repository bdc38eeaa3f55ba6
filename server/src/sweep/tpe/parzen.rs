//! The Parzen estimator of TPE: a weighted mixture with one kernel per observed trial plus a prior
//! kernel, as Optuna 5.0 builds it (docs/search.md#the-model lists each rule). Every kernel is a
//! product over the parameters: a truncated normal for numbers (in log space for log scales, over
//! the integer's cell for integers), a smoothed indicator for a choice. The univariate model is the
//! same estimator built over one parameter at a time.
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::truncnorm;

/// One parameter as the model sees it. Values are given in their own scale (a log-uniform's value,
/// not its logarithm); a choice by its index.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Float {
        lo: f64,
        hi: f64,
        log: bool,
    },
    /// lo..=hi in steps of 1.
    Int {
        lo: f64,
        hi: f64,
    },
    /// One of this many choices.
    Choice(usize),
}

/// The prior kernel's weight, against 1 for each trial (Optuna's default).
const PRIOR_WEIGHT: f64 = 1.0;

/// One parameter's kernels, one per observation and the prior last.
#[derive(Debug, Clone)]
enum Kernels {
    /// Kernel k puts `p_seen` on the choice it observed (`seen[k]`) and `p_other` on each other;
    /// the prior kernel (`seen` None) is uniform. Two numbers instead of a row per kernel.
    Choice {
        seen: Vec<Option<usize>>,
        n_choices: usize,
        p_seen: f64,
        p_other: f64,
        /// ln of p_seen, p_other and 1 / n_choices.
        ln: [f64; 3],
    },
    Number {
        mu: Vec<f64>,
        sigma: Vec<f64>,
        /// ln of each kernel's mass inside the bounds (plus ln sigma and ln sqrt(2 pi) when
        /// continuous): the density's constant part.
        ln_norm: Vec<f64>,
        /// Integers: the distinct (mu, sigma) pairs and each kernel's pair. Integer kernels repeat
        /// (many trials on few values), and each evaluation costs two erfc: done once per pair.
        pairs: Vec<(f64, f64, f64)>,
        pair_of: Vec<usize>,
        /// The bounds in the kernel's own space: log for log scales, widened by half a step for
        /// integers.
        lo: f64,
        hi: f64,
        log: bool,
        /// Integers: their bounds, for rounding a draw back onto them.
        int: Option<(f64, f64)>,
    },
}

/// l(x) or g(x): a mixture over kernels with weights `weights` (normalised).
#[derive(Debug, Clone)]
pub struct Estimator {
    ln_weights: Vec<f64>,
    weights: Vec<f64>,
    dims: Vec<Kernels>,
}

/// The weights of `n` trials in the order they were created: 1 each, except that beyond 25 trials
/// the older ones ramp up linearly from 1/n, so the model drifts toward recent trials.
pub fn trial_weights(n: usize) -> Vec<f64> {
    if n < 25 {
        return vec![1.0; n];
    }
    let ramp = n - 25;
    let start = 1.0 / n as f64;
    let mut w: Vec<f64> = match ramp {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (1.0 - start) / (ramp - 1) as f64;
            let mut v: Vec<f64> = (0..ramp).map(|i| start + i as f64 * step).collect();
            v[ramp - 1] = 1.0;
            v
        }
    };
    w.extend(std::iter::repeat_n(1.0, 25));
    w
}

/// The mixture's weights over `trial` weights and the prior's (last), normalised.
fn normalised(mut weights: Vec<f64>) -> Vec<f64> {
    weights.push(if weights.is_empty() {
        1.0
    } else {
        PRIOR_WEIGHT
    });
    let total: f64 = weights.iter().sum();
    weights.iter_mut().for_each(|w| *w /= total);
    weights
}

/// The mixture's weights when every one of `n` trials weighs the same (the good model with
/// several objectives, as Optuna 5.0 builds it), the prior's last.
pub fn uniform_weights(n: usize) -> Vec<f64> {
    normalised(vec![1.0; n])
}

impl Estimator {
    /// The model of `observations` (rows in the order the trials were created, one value per dim).
    pub fn new(observations: &[Vec<f64>], dims: &[Dim]) -> Self {
        Self::weighted(
            observations,
            dims,
            normalised(trial_weights(observations.len())),
        )
    }

    /// As [`Estimator::new`], every trial weighing the same.
    pub fn uniform(observations: &[Vec<f64>], dims: &[Dim]) -> Self {
        Self::weighted(observations, dims, uniform_weights(observations.len()))
    }

    fn weighted(observations: &[Vec<f64>], dims: &[Dim], weights: Vec<f64>) -> Self {
        let dims = dims
            .iter()
            .enumerate()
            .map(|(d, dim)| {
                let column: Vec<f64> = observations.iter().map(|row| row[d]).collect();
                kernels(&column, dim)
            })
            .collect();
        Estimator {
            ln_weights: weights.iter().map(|w| w.ln()).collect(),
            weights,
            dims,
        }
    }

    /// ln of the mixture's density at `x` (a product of densities and, for integers and choices,
    /// probabilities: the same mix both models use, so their ratio is Optuna's).
    pub fn log_pdf(&self, x: &[f64]) -> f64 {
        let mut acc = self.ln_weights.clone();
        for (kernels, &xd) in self.dims.iter().zip(x) {
            add_log_kernel(kernels, xd, &mut acc);
        }
        log_sum_exp(&acc)
    }

    /// One draw: a kernel by weight, then each parameter from that kernel.
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> Vec<f64> {
        let k = pick(&self.weights, rng.gen::<f64>());
        self.dims
            .iter()
            .map(|kernels| match kernels {
                Kernels::Choice {
                    seen,
                    n_choices,
                    p_seen,
                    p_other,
                    ..
                } => {
                    let row: Vec<f64> = (0..*n_choices)
                        .map(|i| match seen[k] {
                            Some(s) if s == i => *p_seen,
                            Some(_) => *p_other,
                            None => 1.0 / *n_choices as f64,
                        })
                        .collect();
                    pick(&row, rng.gen::<f64>()) as f64
                }
                Kernels::Number {
                    mu,
                    sigma,
                    lo,
                    hi,
                    log,
                    int,
                    ..
                } => {
                    let (m, s) = (mu[k], sigma[k]);
                    let z = truncnorm::ppf(rng.gen::<f64>(), (lo - m) / s, (hi - m) / s);
                    let v = if *log { (z * s + m).exp() } else { z * s + m };
                    match int {
                        // numpy rounds halves to even; so do we.
                        Some((a, b)) => (a + (v - a).round_ties_even()).clamp(*a, *b),
                        None => v,
                    }
                }
            })
            .collect()
    }
}

/// The index i where the cumulative sum of `p` first reaches `u` (the last if rounding falls short).
fn pick(p: &[f64], u: f64) -> usize {
    let mut cum = 0.0;
    for (i, w) in p.iter().enumerate() {
        cum += w;
        if u < cum {
            return i;
        }
    }
    p.len() - 1
}

/// ln of the sum of the exponentials of `v`, without overflow (-inf when all are).
pub(crate) fn log_sum_exp(v: &[f64]) -> f64 {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// Adds each kernel's ln density (or probability) at `x` to `acc`.
fn add_log_kernel(kernels: &Kernels, x: f64, acc: &mut [f64]) {
    match kernels {
        Kernels::Choice { seen, ln, .. } => {
            let x = x as usize;
            for (a, s) in acc.iter_mut().zip(seen) {
                *a += match s {
                    Some(i) if *i == x => ln[0],
                    Some(_) => ln[1],
                    None => ln[2],
                };
            }
        }
        Kernels::Number {
            mu,
            sigma,
            ln_norm,
            pairs,
            pair_of,
            lo,
            hi,
            log,
            int,
        } => {
            if int.is_none() {
                let x = if *log { x.ln() } else { x };
                if x < *lo || x > *hi {
                    acc.iter_mut().for_each(|a| *a = f64::NEG_INFINITY);
                    return;
                }
                for (((a, m), s), n) in acc.iter_mut().zip(mu).zip(sigma).zip(ln_norm) {
                    let z = (x - m) / s;
                    *a += -0.5 * z * z - n;
                }
            } else {
                // The integer's cell [x - 1/2, x + 1/2], as a share of the mass inside the bounds.
                let (left, right) = (x - 0.5, x + 0.5);
                let per_pair: Vec<f64> = pairs
                    .iter()
                    .map(|&(m, s, n)| {
                        truncnorm::log_gauss_mass((left - m) / s, (right - m) / s) - n
                    })
                    .collect();
                for (a, &p) in acc.iter_mut().zip(pair_of) {
                    *a += per_pair[p];
                }
            }
        }
    }
}

const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;

/// One parameter's kernels from its observed values.
fn kernels(column: &[f64], dim: &Dim) -> Kernels {
    match *dim {
        Dim::Choice(n_choices) => choice_kernels(column, n_choices),
        Dim::Float { lo, hi, log } => number_kernels(column, lo, hi, log, None),
        Dim::Int { lo, hi } => number_kernels(column, lo - 0.5, hi + 0.5, false, Some((lo, hi))),
    }
}

/// Each observed choice gets its kernel's mass plus the prior's share spread evenly; the prior
/// kernel is uniform.
fn choice_kernels(column: &[f64], n_choices: usize) -> Kernels {
    let n_kernels = (column.len() + 1) as f64;
    let share = PRIOR_WEIGHT / n_kernels;
    let total = 1.0 + share * n_choices as f64;
    let (p_seen, p_other) = ((1.0 + share) / total, share / total);
    let mut seen: Vec<Option<usize>> = column.iter().map(|&x| Some(x as usize)).collect();
    seen.push(None);
    Kernels::Choice {
        seen,
        n_choices,
        p_seen,
        p_other,
        ln: [p_seen.ln(), p_other.ln(), (1.0 / n_choices as f64).ln()],
    }
}

/// Numbers: a kernel at each observation whose width is the larger gap to its neighbours (the
/// bounds count as neighbours, except that the outermost observations take their inner gap),
/// clipped to [range / min(100, kernels + 1), range]; the prior is centred with the range as width.
fn number_kernels(column: &[f64], lo: f64, hi: f64, log: bool, int: Option<(f64, f64)>) -> Kernels {
    let (lo, hi) = if log { (lo.ln(), hi.ln()) } else { (lo, hi) };
    let mut mu: Vec<f64> = match log {
        true => column.iter().map(|x| x.ln()).collect(),
        false => column.to_vec(),
    };
    let mut sigma = bandwidths(&mu, lo, hi);
    mu.push(0.5 * (lo + hi));
    sigma.push(hi - lo);
    let ln_norm: Vec<f64> = mu
        .iter()
        .zip(&sigma)
        .map(|(m, s)| {
            let mass = truncnorm::log_gauss_mass((lo - m) / s, (hi - m) / s);
            match int {
                Some(_) => mass,
                None => mass + s.ln() + LN_SQRT_2PI,
            }
        })
        .collect();
    let (mut pairs, mut pair_of) = (vec![], vec![]);
    if int.is_some() {
        let mut seen: std::collections::HashMap<(u64, u64), usize> = Default::default();
        for k in 0..mu.len() {
            let next = pairs.len();
            let p = *seen
                .entry((mu[k].to_bits(), sigma[k].to_bits()))
                .or_insert(next);
            if p == next {
                pairs.push((mu[k], sigma[k], ln_norm[k]));
            }
            pair_of.push(p);
        }
    }
    Kernels::Number {
        mu,
        sigma,
        ln_norm,
        pairs,
        pair_of,
        lo,
        hi,
        log,
        int,
    }
}

fn bandwidths(mu: &[f64], lo: f64, hi: f64) -> Vec<f64> {
    let n = mu.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| mu[a].total_cmp(&mu[b]));
    let mut with_ends = Vec::with_capacity(n + 2);
    with_ends.push(lo);
    with_ends.extend(order.iter().map(|&i| mu[i]));
    with_ends.push(hi);
    let mut sorted_sigma: Vec<f64> = (1..=n)
        .map(|i| (with_ends[i] - with_ends[i - 1]).max(with_ends[i + 1] - with_ends[i]))
        .collect();
    if n >= 2 {
        sorted_sigma[0] = with_ends[2] - with_ends[1];
        sorted_sigma[n - 1] = with_ends[n] - with_ends[n - 1];
    }
    let n_kernels = (n + 1) as f64;
    let (min_sigma, max_sigma) = ((hi - lo) / (1.0 + n_kernels).min(100.0), hi - lo);
    let mut sigma = vec![0.0; n];
    for (pos, &i) in order.iter().enumerate() {
        sigma[i] = sorted_sigma[pos].clamp(min_sigma, max_sigma);
    }
    sigma
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_trials_weigh_less_once_there_are_more_than_25() {
        assert_eq!(trial_weights(3), vec![1.0; 3]);
        assert_eq!(trial_weights(25), vec![1.0; 25]);
        let w = trial_weights(30);
        assert_eq!(w.len(), 30);
        assert!((w[0] - 1.0 / 30.0).abs() < 1e-15 && w[4] == 1.0 && w[29] == 1.0);
        assert!(w.windows(2).all(|p| p[0] <= p[1]));
    }

    #[test]
    fn a_mixture_integrates_to_one() {
        let dims = [Dim::Float {
            lo: 1e-3,
            hi: 1.0,
            log: true,
        }];
        let obs = vec![vec![0.01], vec![0.02], vec![0.5]];
        let e = Estimator::new(&obs, &dims);
        // In log space the density is over ln x: integrate over u = ln x.
        let (a, b) = (1e-3f64.ln(), 0.0f64);
        let n = 20_000;
        let h = (b - a) / n as f64;
        let total: f64 = (0..n)
            .map(|i| e.log_pdf(&[(a + (i as f64 + 0.5) * h).exp()]).exp() * h)
            .sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        let ints = Estimator::new(&[vec![2.0], vec![3.0]], &[Dim::Int { lo: 0.0, hi: 9.0 }]);
        let p: f64 = (0..10).map(|i| ints.log_pdf(&[i as f64]).exp()).sum();
        assert!((p - 1.0).abs() < 1e-12, "{p}");
    }
}

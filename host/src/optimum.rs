//! Reference figures for 1-d data: the optimum `p*(x) ~ p_base(x) exp(lambda r(x))` estimated
//! by weighting base-model samples with `exp(lambda r)`, and the 1-Wasserstein distance.

/// A weighted sample: points sorted increasingly, weights summing to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Weighted {
    /// Sorted points.
    pub points: Vec<f64>,
    /// Their probabilities.
    pub weights: Vec<f64>,
}

impl Weighted {
    /// Equal weights.
    pub fn uniform(points: &[f64]) -> Self {
        let w = 1.0 / points.len().max(1) as f64;
        Self::new(points.iter().map(|&p| (p, w)).collect())
    }

    /// From `(point, weight)` pairs (weights normalised here; non-finite points dropped).
    pub fn new(mut pairs: Vec<(f64, f64)>) -> Self {
        pairs.retain(|(p, w)| p.is_finite() && w.is_finite() && *w >= 0.0);
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total: f64 = pairs.iter().map(|(_, w)| w).sum();
        let (points, weights) = pairs
            .into_iter()
            .map(|(p, w)| (p, if total > 0.0 { w / total } else { 0.0 }))
            .unzip();
        Self { points, weights }
    }

    /// Kish's effective sample size `1 / sum w^2`.
    pub fn effective_size(&self) -> f64 {
        1.0 / self.weights.iter().map(|w| w * w).sum::<f64>()
    }
}

/// The optimum estimated from base samples `x` with rewards `r` (invalid ones dropped):
/// weights `exp(lambda (r - max r))`. Returns it and the optimum's mean reward.
pub fn tilted_optimum(x: &[f64], r: &[f64], valid: &[bool], lambda: f64) -> (Weighted, f64) {
    let max = x
        .iter()
        .zip(r)
        .zip(valid)
        .filter(|(_, v)| **v)
        .map(|((_, r), _)| *r)
        .fold(f64::NEG_INFINITY, f64::max);
    let pairs: Vec<(f64, f64, f64)> = x
        .iter()
        .zip(r)
        .zip(valid)
        .filter(|(_, v)| **v)
        .map(|((x, r), _)| (*x, (lambda * (r - max)).exp(), *r))
        .collect();
    let total: f64 = pairs.iter().map(|p| p.1).sum();
    let mean_reward = pairs.iter().map(|p| p.1 * p.2).sum::<f64>() / total;
    let weighted = Weighted::new(pairs.iter().map(|p| (p.0, p.1)).collect());
    (weighted, mean_reward)
}

/// `W1(a, b) = integral |F_a(x) - F_b(x)| dx` between two weighted samples.
pub fn wasserstein1(a: &Weighted, b: &Weighted) -> f64 {
    let (mut i, mut j) = (0, 0);
    let (mut fa, mut fb) = (0.0f64, 0.0f64);
    let mut previous: Option<f64> = None;
    let mut distance = 0.0;
    while i < a.points.len() || j < b.points.len() {
        let next_a = a.points.get(i).copied().unwrap_or(f64::INFINITY);
        let next_b = b.points.get(j).copied().unwrap_or(f64::INFINITY);
        let x = next_a.min(next_b);
        if let Some(p) = previous {
            distance += (fa - fb).abs() * (x - p);
        }
        while i < a.points.len() && a.points[i] == x {
            fa += a.weights[i];
            i += 1;
        }
        while j < b.points.len() && b.points[j] == x {
            fb += b.weights[j];
            j += 1;
        }
        previous = Some(x);
    }
    distance
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasserstein_of_shifted_samples_is_the_shift() {
        let a = Weighted::uniform(&[0.0, 1.0, 2.0, 3.0]);
        let b = Weighted::uniform(&[0.5, 1.5, 2.5, 3.5]);
        assert!((wasserstein1(&a, &b) - 0.5).abs() < 1e-12);
        assert!((wasserstein1(&a, &a)).abs() < 1e-12);
    }

    #[test]
    fn tilting_a_two_point_sample_matches_bayes() {
        // Base: 0 and 1 equally likely; reward 1 at 1: p*(1) = e^2 / (1 + e^2) for lambda = 2.
        let (optimum, mean_reward) = tilted_optimum(&[0.0, 1.0], &[0.0, 1.0], &[true, true], 2.0);
        let expected = 2f64.exp() / (1.0 + 2f64.exp());
        assert!((optimum.weights[1] - expected).abs() < 1e-12);
        assert!((mean_reward - expected).abs() < 1e-12);
        let (dropped, _) = tilted_optimum(&[0.0, 1.0], &[0.0, f64::NAN], &[true, false], 2.0);
        assert_eq!(dropped.points, vec![0.0]);
    }
}

//! The optimum `p*(x) ~ p_base(x) exp(lambda r(x))` estimated from base-model samples by
//! self-normalised importance weights `exp(lambda r)`, for any data type: its mean reward and
//! the effective size of the weighted sample (docs/mathematics.md, section 9).

/// Base samples weighted towards the optimum.
#[derive(Debug, Clone, PartialEq)]
pub struct Tilt {
    /// Indices of the valid samples the weights belong to.
    pub indices: Vec<usize>,
    /// Their weights, summing to 1.
    pub weights: Vec<f64>,
    /// `E_p*[r]` estimated with these weights.
    pub reward_mean: f64,
}

impl Tilt {
    /// Kish's effective sample size `1 / sum w^2`.
    pub fn effective_size(&self) -> f64 {
        1.0 / self.weights.iter().map(|w| w * w).sum::<f64>()
    }
}

/// Weights `exp(lambda (r - max r))` of the valid samples, normalised.
pub fn tilt(r: &[f64], valid: &[bool], lambda: f64) -> Tilt {
    let indices: Vec<usize> = (0..r.len())
        .filter(|&i| valid[i] && r[i].is_finite())
        .collect();
    let max = indices
        .iter()
        .map(|&i| r[i])
        .fold(f64::NEG_INFINITY, f64::max);
    let raw: Vec<f64> = indices
        .iter()
        .map(|&i| (lambda * (r[i] - max)).exp())
        .collect();
    let total: f64 = raw.iter().sum();
    let weights: Vec<f64> = raw.iter().map(|w| w / total).collect();
    let reward_mean = indices.iter().zip(&weights).map(|(&i, w)| w * r[i]).sum();
    Tilt {
        indices,
        weights,
        reward_mean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilting_a_two_point_sample_matches_bayes() {
        // Base: 0 and 1 equally likely; reward 1 at 1: p*(1) = e^2 / (1 + e^2) for lambda = 2.
        let optimum = tilt(&[0.0, 1.0], &[true, true], 2.0);
        let expected = 2f64.exp() / (1.0 + 2f64.exp());
        assert!((optimum.weights[1] - expected).abs() < 1e-12);
        assert!((optimum.reward_mean - expected).abs() < 1e-12);
        let dropped = tilt(&[0.0, f64::NAN], &[true, false], 2.0);
        assert_eq!((dropped.indices, dropped.weights), (vec![0], vec![1.0]));
    }
}

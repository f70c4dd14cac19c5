//! Distances between two sample sets: how far the adapted model's samples are from exact
//! samples of the optimum.
//!
//! - [`wasserstein1_1d`]: the exact 1-Wasserstein distance between two empirical
//!   distributions on the line, `int |F_a(x) - F_b(x)| dx` (any sizes).
//! - [`sliced_wasserstein1`]: the average of [`wasserstein1_1d`] over random unit directions.
//! - [`energy_distance`]: Székely's energy distance `2 E|X - Y| - E|X - X'| - E|Y - Y'|` as a
//!   V-statistic (all pairs, including each point with itself), which is never negative and is 0
//!   for identical sets; not square-rooted. It costs `O((n_a + n_b)^2 d)`: subsample large sets.
//!
//! Sets with a non-finite coordinate give `NaN`: a diverged model has no distance.

use super::linalg::Rng;

fn all_finite<'a>(mut values: impl Iterator<Item = &'a f64>) -> bool {
    values.all(|v| v.is_finite())
}

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

/// The 1-Wasserstein distance between the empirical distributions of `a` and `b` (equal or
/// unequal sizes), `int |F_a - F_b|`. Panics when either is empty.
pub fn wasserstein1_1d(a: &[f64], b: &[f64]) -> f64 {
    assert!(
        !a.is_empty() && !b.is_empty(),
        "wasserstein1_1d needs two non-empty sets"
    );
    if !all_finite(a.iter().chain(b)) {
        return f64::NAN;
    }
    wasserstein1(&Weighted::uniform(a), &Weighted::uniform(b))
}

/// The sliced 1-Wasserstein distance: the mean of [`wasserstein1_1d`] between the projections
/// of `a` and `b` on `projections` random unit directions (uniform on the sphere, drawn from
/// `seed`). In one dimension every direction gives the exact 1-Wasserstein distance. Panics
/// when a set is empty, `projections` is 0 or the points' dimensions differ.
pub fn sliced_wasserstein1(a: &[Vec<f64>], b: &[Vec<f64>], projections: usize, seed: u64) -> f64 {
    let uniform = |n: usize| vec![1.0 / n.max(1) as f64; n];
    sliced_wasserstein1_weighted(
        (a, &uniform(a.len())),
        (b, &uniform(b.len())),
        projections,
        seed,
    )
}

/// [`sliced_wasserstein1`] between weighted sets `(points, weights)`: for the distance of
/// samples to an optimum represented by weighted base samples.
pub fn sliced_wasserstein1_weighted(
    (a, wa): (&[Vec<f64>], &[f64]),
    (b, wb): (&[Vec<f64>], &[f64]),
    projections: usize,
    seed: u64,
) -> f64 {
    assert!(
        !a.is_empty() && !b.is_empty(),
        "sliced_wasserstein1 needs two non-empty sets"
    );
    assert!(projections > 0, "sliced_wasserstein1 needs a projection");
    let d = a[0].len();
    assert!(
        a.iter().chain(b).all(|x| x.len() == d),
        "sliced_wasserstein1 needs points of one dimension"
    );
    if !all_finite(a.iter().chain(b).flatten()) {
        return f64::NAN;
    }
    let mut rng = Rng::new(seed);
    let mut total = 0.0;
    for _ in 0..projections {
        let mut u: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        let norm = u.iter().map(|v| v * v).sum::<f64>().sqrt();
        u.iter_mut().for_each(|v| *v /= norm);
        let project = |points: &[Vec<f64>], weights: &[f64]| {
            Weighted::new(
                points
                    .iter()
                    .zip(weights)
                    .map(|(x, w)| (x.iter().zip(&u).map(|(p, q)| p * q).sum::<f64>(), *w))
                    .collect(),
            )
        };
        total += wasserstein1(&project(a, wa), &project(b, wb));
    }
    total / projections as f64
}

fn euclidean(x: &[f64], y: &[f64]) -> f64 {
    x.iter()
        .zip(y)
        .map(|(p, q)| (p - q) * (p - q))
        .sum::<f64>()
        .sqrt()
}

/// Mean distance over all ordered pairs of one set (the diagonal's zeros included).
fn mean_within(a: &[Vec<f64>]) -> f64 {
    let mut sum = 0.0;
    for i in 0..a.len() {
        for j in i + 1..a.len() {
            sum += euclidean(&a[i], &a[j]);
        }
    }
    2.0 * sum / (a.len() as f64 * a.len() as f64)
}

/// The energy distance `2 E|X - Y| - E|X - X'| - E|Y - Y'|` between the empirical
/// distributions of `a` and `b`, as a V-statistic (see the module documentation). Panics when a
/// set is empty or the points' dimensions differ.
pub fn energy_distance(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert!(
        !a.is_empty() && !b.is_empty(),
        "energy_distance needs two non-empty sets"
    );
    let d = a[0].len();
    assert!(
        a.iter().chain(b).all(|x| x.len() == d),
        "energy_distance needs points of one dimension"
    );
    if !all_finite(a.iter().chain(b).flatten()) {
        return f64::NAN;
    }
    let mut between = 0.0;
    for x in a {
        for y in b {
            between += euclidean(x, y);
        }
    }
    let between = between / (a.len() as f64 * b.len() as f64);
    (2.0 * between - mean_within(a) - mean_within(b)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normals(n: usize, d: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| (0..d).map(|_| rng.normal()).collect())
            .collect()
    }

    #[test]
    fn one_dimensional_distance_is_exact() {
        assert_eq!(wasserstein1_1d(&[0.0; 5], &[3.0; 7]), 3.0);
        let a: Vec<f64> = normals(1000, 1, 1).into_iter().map(|x| x[0]).collect();
        let shifted: Vec<f64> = a.iter().map(|v| v + 0.7).collect();
        assert!((wasserstein1_1d(&a, &shifted) - 0.7).abs() < 1e-12);
        assert!((wasserstein1_1d(&shifted, &a) - 0.7).abs() < 1e-12);
        // F_a = 1/2 on [0, 1); F_b = 1/3 on [0, 1/2), 2/3 on [1/2, 1): 1/12 + 1/12.
        assert!((wasserstein1_1d(&[1.0, 0.0], &[0.5, 0.0, 1.0]) - 1.0 / 6.0).abs() < 1e-15);
        assert_eq!(wasserstein1_1d(&a, &a), 0.0);
        assert!(wasserstein1_1d(&[0.0, f64::NAN], &[1.0]).is_nan());
    }

    #[test]
    fn sliced_distance_of_a_shift_averages_its_projections() {
        // Each direction u gives |u . v|; over the circle E|u . v| = 2 |v| / pi.
        let a = normals(500, 2, 2);
        let v = [3.0, 4.0];
        let b: Vec<Vec<f64>> = a.iter().map(|x| vec![x[0] + v[0], x[1] + v[1]]).collect();
        let projections = 4000;
        let got = sliced_wasserstein1(&a, &b, projections, 3);
        let want = 2.0 * 5.0 / std::f64::consts::PI;
        // sd of 5 |cos| is 5 sqrt(1/2 - 4/pi^2) ≈ 1.54.
        let se = 1.54 / (projections as f64).sqrt();
        assert!((got - want).abs() < 4.0 * se, "{got} vs {want}");
        // In one dimension it is the exact distance.
        let a1: Vec<Vec<f64>> = a.iter().map(|x| vec![x[0]]).collect();
        let b1: Vec<Vec<f64>> = a.iter().map(|x| vec![x[1]]).collect();
        let flat = |s: &[Vec<f64>]| s.iter().map(|x| x[0]).collect::<Vec<_>>();
        let exact = wasserstein1_1d(&flat(&a1), &flat(&b1));
        assert!((sliced_wasserstein1(&a1, &b1, 5, 0) - exact).abs() < 1e-12);
    }

    #[test]
    fn energy_distance_of_point_masses_and_identical_sets() {
        let a = normals(300, 3, 4);
        assert!(energy_distance(&a, &a).abs() < 1e-12);
        // Two point masses |c| apart: 2 |c|.
        let zero = vec![vec![0.0, 0.0]; 3];
        let c = vec![vec![3.0, 4.0]; 5];
        assert!((energy_distance(&zero, &c) - 10.0).abs() < 1e-12);
        // Symmetric, and larger for samples further apart.
        let b = normals(300, 3, 5);
        let far: Vec<Vec<f64>> = b
            .iter()
            .map(|x| x.iter().map(|v| v + 2.0).collect())
            .collect();
        let near = energy_distance(&a, &b);
        assert!((near - energy_distance(&b, &a)).abs() < 1e-12);
        assert!(energy_distance(&a, &far) > 10.0 * near);
        // In 1-d the energy distance is 2 int (F_a - F_b)^2: {0} vs {0, 1} gives 2 (1/2)^2 = 1/2.
        assert!((energy_distance(&[vec![0.0]], &[vec![0.0], vec![1.0]]) - 0.5).abs() < 1e-15);
    }
}

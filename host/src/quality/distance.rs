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
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut previous = a[0].min(b[0]);
    let mut total = 0.0;
    // Between consecutive points of the merged order both CDFs are constant.
    while i < a.len() || j < b.len() {
        let from_a = j >= b.len() || (i < a.len() && a[i] <= b[j]);
        let next = if from_a { a[i] } else { b[j] };
        total += (i as f64 / na - j as f64 / nb).abs() * (next - previous);
        previous = next;
        if from_a {
            i += 1;
        } else {
            j += 1;
        }
    }
    total
}

/// The sliced 1-Wasserstein distance: the mean of [`wasserstein1_1d`] between the projections
/// of `a` and `b` on `projections` random unit directions (uniform on the sphere, drawn from
/// `seed`). In one dimension every direction gives the exact 1-Wasserstein distance. Panics
/// when a set is empty, `projections` is 0 or the points' dimensions differ.
pub fn sliced_wasserstein1(a: &[Vec<f64>], b: &[Vec<f64>], projections: usize, seed: u64) -> f64 {
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
    let mut rng = Rng::new(seed);
    let mut total = 0.0;
    for _ in 0..projections {
        let mut u: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        let norm = u.iter().map(|v| v * v).sum::<f64>().sqrt();
        u.iter_mut().for_each(|v| *v /= norm);
        let project = |x: &Vec<f64>| x.iter().zip(&u).map(|(p, q)| p * q).sum::<f64>();
        let pa: Vec<f64> = a.iter().map(project).collect();
        let pb: Vec<f64> = b.iter().map(project).collect();
        total += wasserstein1_1d(&pa, &pb);
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

//! The small linear algebra and randomness of the quality reference, in plain `f64` Rust (no
//! dependency): a Cholesky factorisation (solves, log-determinants, exact Gaussian draws) and a
//! seeded xoshiro256** generator with Box–Muller normals. Matrices are row-major `d x d`.
//!
//! It is deliberately a separate copy from the one in `examples/exact-problems`: the reference
//! should not share code with the model it judges.

/// The lower-triangular Cholesky factor `L` of a symmetric positive-definite matrix `A = L L^T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cholesky {
    d: usize,
    l: Vec<f64>,
}

impl Cholesky {
    /// Factorises `a` (`d x d`, row-major; only its lower triangle is read). `None` when `a` is
    /// not (numerically) positive definite.
    pub fn new(a: &[f64], d: usize) -> Option<Self> {
        assert_eq!(a.len(), d * d, "a {d}x{d} matrix has {} entries", d * d);
        let mut l = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..=i {
                let mut sum = a[i * d + j];
                for k in 0..j {
                    sum -= l[i * d + k] * l[j * d + k];
                }
                if i == j {
                    if !(sum > 0.0 && sum.is_finite()) {
                        return None;
                    }
                    l[i * d + i] = sum.sqrt();
                } else {
                    l[i * d + j] = sum / l[j * d + j];
                }
            }
        }
        Some(Self { d, l })
    }

    /// `A^{-1} b`, by forward and back substitution.
    pub fn solve(&self, b: &[f64]) -> Vec<f64> {
        let d = self.d;
        let mut y = b.to_vec();
        for i in 0..d {
            let known: f64 = (0..i).map(|k| self.l[i * d + k] * y[k]).sum();
            y[i] = (y[i] - known) / self.l[i * d + i];
        }
        for i in (0..d).rev() {
            let known: f64 = (i + 1..d).map(|k| self.l[k * d + i] * y[k]).sum();
            y[i] = (y[i] - known) / self.l[i * d + i];
        }
        y
    }

    /// `log det A`.
    pub fn log_det(&self) -> f64 {
        (0..self.d).map(|i| 2.0 * self.l[i * self.d + i].ln()).sum()
    }

    /// `L z`, written into `out`: a draw of `N(0, A)` when `z` is standard normal.
    pub fn mul_lower_into(&self, z: &[f64], out: &mut [f64]) {
        let d = self.d;
        for (i, value) in out.iter_mut().enumerate().take(d) {
            *value = (0..=i).map(|k| self.l[i * d + k] * z[k]).sum();
        }
    }
}

/// `A x` for a row-major `d x d` matrix.
pub fn mat_vec(a: &[f64], x: &[f64]) -> Vec<f64> {
    let d = x.len();
    (0..d)
        .map(|i| (0..d).map(|j| a[i * d + j] * x[j]).sum())
        .collect()
}

/// `a . b`.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One step of splitmix64, the usual seeder of the xoshiro generators.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for the independent stream `stream` of `seed` (reference draws, rejection draws, ...).
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    let mut state = seed ^ stream.wrapping_mul(0xD134_2543_DE82_EF95);
    splitmix64(&mut state)
}

/// xoshiro256** seeded through splitmix64, with Box–Muller normals: the same seed gives the
/// same numbers on every platform.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
    spare: Option<f64>,
}

impl Rng {
    /// A generator determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut state = seed;
        let s = [
            splitmix64(&mut state),
            splitmix64(&mut state),
            splitmix64(&mut state),
            splitmix64(&mut state),
        ];
        Self { s, spare: None }
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform on the open interval `(0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller; the second value of each pair is kept for the next call).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let radius = (-2.0 * self.uniform().ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * self.uniform();
        self.spare = Some(radius * angle.sin());
        radius * angle.cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_and_reconstructs() {
        let a = [4.0, 2.0, 0.6, 2.0, 3.0, 0.4, 0.6, 0.4, 2.0];
        let c = Cholesky::new(&a, 3).unwrap();
        let b = [1.0, -2.0, 0.5];
        let x = c.solve(&b);
        let back = mat_vec(&a, &x);
        for (u, v) in back.iter().zip(b) {
            assert!((u - v).abs() < 1e-12);
        }
        // det = 4(6 - 0.16) - 2(4 - 0.24) + 0.6(0.8 - 1.8) = 23.36 - 7.52 - 0.6 = 15.24
        assert!((c.log_det() - 15.24f64.ln()).abs() < 1e-12);
        assert!(Cholesky::new(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
    }

    #[test]
    fn normals_have_unit_moments_and_depend_on_the_seed() {
        let mut rng = Rng::new(7);
        let n = 200_000;
        let z: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = z.iter().sum::<f64>() / n as f64;
        let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.01, "{var}");
        assert_eq!(Rng::new(7).normal(), z[0]);
        assert_ne!(Rng::new(8).normal(), z[0]);
    }
}

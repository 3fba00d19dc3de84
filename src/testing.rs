//! Helpers for checking numerics: a small seeded RNG and tensor comparisons with the tolerance convention
//! used throughout detkd's tests (error relative to the reference tensor's largest magnitude).

use crate::tensor::{DType, Device, Tensor};

/// SplitMix64: tiny, seeded, reproducible; good enough for test inputs (not for cryptography).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`; equal seeds give equal sequences on every platform.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 uniformly distributed random bits (advances the state).
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }

    /// Uniform integer in `[0, n)`; `n` must be > 0.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform(f64::MIN_POSITIVE, 1.0);
        let u2 = self.uniform(0.0, 1.0);
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// `n` independent standard-normal samples.
    pub fn normal_vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.normal()).collect()
    }
}

/// `max |got − want| / max(max |want|, f64::MIN_POSITIVE)`; infinite if lengths differ or `got` has a
/// non-finite value where `want` is finite.
pub fn relative_error(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    got.iter().zip(want).fold(0.0f64, |m, (g, w)| {
        let d = (g - w).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d / scale)
        }
    })
}

/// Panics with `what` and the error if `relative_error(got, want) > tol`.
#[track_caller]
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    let err = relative_error(got, want);
    assert!(
        err <= tol,
        "{what}: relative error {err:e} exceeds {tol:e} (lengths {} vs {})",
        got.len(),
        want.len()
    );
}

/// [`assert_close`] for results that may hold NaN (a mean over nothing): NaN must sit exactly where the
/// reference has NaN, and the other entries must agree within `tol`.
pub fn assert_close_nan(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.is_nan(), w.is_nan(), "{what}[{i}]: got {g}, want {w}");
    }
    let finite = |v: &[f64]| -> Vec<f64> {
        v.iter()
            .map(|x| if x.is_nan() { 0.0 } else { *x })
            .collect()
    };
    assert_close(what, &finite(got), &finite(want), tol);
}

/// CUDA-vs-CPU tolerances of the parity tests: (dtype, forward, backward), relative to the reference's largest
/// magnitude, against the f64 CPU reference evaluated on the same rounded inputs.
pub const TOLERANCES: [(DType, f64, f64); 3] = [
    (DType::F32, 1e-5, 1e-4),
    (DType::F16, 1e-2, 1e-2),
    (DType::BF16, 1e-2, 2e-2),
];

/// A CPU tensor of `data` with `shape`, rounded once to `dtype`. Panics on a size mismatch (test inputs).
pub fn host(data: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_vec(data.to_vec(), shape)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// `t` converted to f64 (same device).
pub fn f64_of(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F64).unwrap()
}

/// The values of `t` as f64.
pub fn vals(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

/// A tensor on `device` filled with NaN (floats) or `i64::MIN` (indices), so that elements a kernel fails to
/// write show up in the comparison.
pub fn poisoned(shape: &[usize], dtype: DType, device: &Device) -> Tensor {
    let n = shape.iter().product();
    let host = if dtype == DType::I64 {
        Tensor::from_vec(vec![i64::MIN; n], shape).unwrap()
    } else {
        Tensor::from_vec(vec![f64::NAN; n], shape)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    host.to_device(device).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_flags_nan_and_length() {
        assert_eq!(relative_error(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((relative_error(&[1.0, 2.1], &[1.0, 2.0]) - 0.05).abs() < 1e-12);
        assert_eq!(relative_error(&[f64::NAN], &[1.0]), f64::INFINITY);
        assert_eq!(relative_error(&[1.0], &[1.0, 2.0]), f64::INFINITY);
    }

    #[test]
    fn rng_is_reproducible_and_spread() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        let mut r = Rng::new(1);
        let xs = r.normal_vec(4000);
        let mean = xs.iter().sum::<f64>() / 4000.0;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4000.0;
        assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.1, "{mean} {var}");
    }
}

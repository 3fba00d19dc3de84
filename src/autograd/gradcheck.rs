//! Finite-difference gradient checks with PyTorch's `torch.autograd.gradcheck` conventions
//! (shared/spec/kernels.md C): central differences `(f(x+ε) − f(x−ε)) / 2ε` perturbing one element at a
//! time, the analytic Jacobian built row by row from the backward with unit upstream gradients, and
//! `|analytic − numeric| ≤ atol + rtol·|numeric|` for every entry. The backward is also run twice on the same
//! upstream gradient and must agree bitwise (PyTorch's `nondet_tol = 0`).

use super::{Tape, Var};
use crate::error::Result;
use crate::tensor::Tensor;
use std::fmt;

/// Tolerances; the defaults are PyTorch's for f64.
#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    /// Finite-difference step `ε` added to and subtracted from each input element; default 1e-6.
    pub eps: f64,
    /// Absolute tolerance on each Jacobian entry; default 1e-5.
    pub atol: f64,
    /// Tolerance relative to `|numeric|` on each Jacobian entry; default 1e-3.
    pub rtol: f64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-6,
            atol: 1e-5,
            rtol: 1e-3,
        }
    }
}

/// What a passing check covered.
#[derive(Clone, Debug, PartialEq)]
pub struct GradcheckReport {
    /// Number of scalar inputs checked (the length of the flattened `x`, all leaves together).
    pub inputs: usize,
    /// Number of scalar outputs (the length of the flattened forward result).
    pub outputs: usize,
    /// Largest `|analytic − numeric|` over the Jacobian.
    pub max_abs_error: f64,
    /// Number of Jacobian entries that are not zero (a check over an all-zero Jacobian proves little).
    pub nonzero_entries: usize,
}

/// Why a check failed.
#[derive(Clone, Debug, PartialEq)]
pub enum GradcheckFailure {
    /// The forward or backward returned an error or a result of the wrong length.
    Call(String),
    /// Jacobian entry `(output, input)` disagrees.
    Mismatch {
        /// Index of the output element (Jacobian row) in the flattened output.
        output: usize,
        /// Index of the input element (Jacobian column) in the flattened input.
        input: usize,
        /// `∂out/∂in` from the backward (vector-Jacobian product with a unit upstream gradient).
        analytic: f64,
        /// `∂out/∂in` from central differences.
        numeric: f64,
    },
    /// Two backward runs on the same upstream gradient differed at `input`.
    Nondeterministic {
        /// Index of the first differing element of the flattened input gradient.
        input: usize,
        /// That element's gradient from the first backward run.
        first: f64,
        /// That element's gradient from the second backward run (not bitwise equal to `first`).
        second: f64,
    },
}

impl fmt::Display for GradcheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GradcheckFailure::Call(msg) => write!(f, "gradcheck could not evaluate the op: {msg}"),
            GradcheckFailure::Mismatch {
                output,
                input,
                analytic,
                numeric,
            } => write!(
                f,
                "Jacobian mismatch at output {output}, input {input}: analytic {analytic:e}, numeric {numeric:e}"
            ),
            GradcheckFailure::Nondeterministic {
                input,
                first,
                second,
            } => write!(
                f,
                "backward is not deterministic at input {input}: {first:e} then {second:e}"
            ),
        }
    }
}

impl std::error::Error for GradcheckFailure {}

/// Checks `backward` against central differences of `forward` at `x`.
///
/// `forward(x)` returns the flattened output; `backward(x, grad_out)` returns `∂⟨forward(x), grad_out⟩/∂x`,
/// the vector-Jacobian product. Ops with several differentiable inputs concatenate them into `x`.
pub fn gradcheck(
    forward: impl Fn(&[f64]) -> Result<Vec<f64>>,
    backward: impl Fn(&[f64], &[f64]) -> Result<Vec<f64>>,
    x: &[f64],
    opts: &GradcheckOptions,
) -> std::result::Result<GradcheckReport, GradcheckFailure> {
    let call = |e: crate::Error| GradcheckFailure::Call(e.to_string());
    let outputs = forward(x).map_err(call)?.len();
    let inputs = x.len();

    // numeric[j][i] = ∂out_j/∂x_i
    let mut numeric = vec![vec![0.0; inputs]; outputs];
    let mut probe = x.to_vec();
    for i in 0..inputs {
        probe[i] = x[i] + opts.eps;
        let plus = forward(&probe).map_err(call)?;
        probe[i] = x[i] - opts.eps;
        let minus = forward(&probe).map_err(call)?;
        probe[i] = x[i];
        if plus.len() != outputs || minus.len() != outputs {
            return Err(GradcheckFailure::Call(format!(
                "forward returned {} and {} values, expected {outputs}",
                plus.len(),
                minus.len()
            )));
        }
        for j in 0..outputs {
            numeric[j][i] = (plus[j] - minus[j]) / (2.0 * opts.eps);
        }
    }

    let mut report = GradcheckReport {
        inputs,
        outputs,
        max_abs_error: 0.0,
        nonzero_entries: 0,
    };
    let mut unit = vec![0.0; outputs];
    for (j, numeric_row) in numeric.iter().enumerate() {
        unit[j] = 1.0;
        let row = backward(x, &unit).map_err(call)?;
        unit[j] = 0.0;
        if row.len() != inputs {
            return Err(GradcheckFailure::Call(format!(
                "backward returned {} values, expected {inputs}",
                row.len()
            )));
        }
        for (i, (&analytic, &numeric)) in row.iter().zip(numeric_row).enumerate() {
            let err = (analytic - numeric).abs();
            // Written so that a NaN on either side fails the check.
            let within_tolerance = err <= opts.atol + opts.rtol * numeric.abs();
            if !within_tolerance {
                return Err(GradcheckFailure::Mismatch {
                    output: j,
                    input: i,
                    analytic,
                    numeric,
                });
            }
            report.max_abs_error = report.max_abs_error.max(err);
            report.nonzero_entries += usize::from(analytic != 0.0 || numeric != 0.0);
        }
    }

    // Same upstream gradient twice: a deterministic backward reproduces itself bit for bit.
    let upstream: Vec<f64> = (0..outputs)
        .map(|j| ((j * 7919 % 113) as f64) / 56.5 - 1.0)
        .collect();
    let first = backward(x, &upstream).map_err(call)?;
    let second = backward(x, &upstream).map_err(call)?;
    if let Some(i) = (0..first.len()).find(|&i| first[i].to_bits() != second[i].to_bits()) {
        return Err(GradcheckFailure::Nondeterministic {
            input: i,
            first: first[i],
            second: second[i],
        });
    }
    Ok(report)
}

/// [`gradcheck`] of a function built on a [`Tape`]: `build(tape, leaves, constants)` records the function
/// of the differentiable `leaves` (f64 host tensors, perturbed one element at a time) and the `constants`
/// (passed unchanged, any dtype) and returns its output. Every evaluation uses a fresh tape; the analytic
/// side is [`Tape::backward_with`], so this checks the recorded backward closures end to end.
pub fn tape_gradcheck(
    build: impl Fn(&Tape, &[Var], &[Var]) -> Result<Var>,
    leaves: &[Tensor],
    constants: &[Tensor],
    opts: &GradcheckOptions,
) -> std::result::Result<GradcheckReport, GradcheckFailure> {
    let call = |e: crate::Error| GradcheckFailure::Call(e.to_string());
    let shapes: Vec<Vec<usize>> = leaves.iter().map(|t| t.shape().to_vec()).collect();
    let mut x = Vec::new();
    for t in leaves {
        x.extend(t.to_vec::<f64>().map_err(call)?);
    }
    // Builds the function at flat inputs `x` on a new tape.
    let run = |x: &[f64]| -> Result<(Tape, Vec<Var>, Var)> {
        let tape = Tape::new();
        let mut offset = 0;
        let mut vars = Vec::with_capacity(shapes.len());
        for shape in &shapes {
            let n: usize = shape.iter().product();
            let t = Tensor::from_vec(x[offset..offset + n].to_vec(), shape)?;
            vars.push(tape.leaf(t));
            offset += n;
        }
        let consts = constants
            .iter()
            .map(|c| Ok(tape.constant(c.try_clone()?)))
            .collect::<Result<Vec<_>>>()?;
        let out = build(&tape, &vars, &consts)?;
        Ok((tape, vars, out))
    };
    let forward = |x: &[f64]| -> Result<Vec<f64>> {
        let (tape, _, out) = run(x)?;
        let value = tape.value(out)?;
        value.to_vec::<f64>()
    };
    let backward = |x: &[f64], g: &[f64]| -> Result<Vec<f64>> {
        let (tape, vars, out) = run(x)?;
        let value = tape.value(out)?;
        let seed = Tensor::from_vec(g.to_vec(), value.shape())?.into_dtype(value.dtype())?;
        let grads = tape.backward_with(out, seed)?;
        let mut flat = Vec::with_capacity(x.len());
        for (v, shape) in vars.iter().zip(&shapes) {
            match grads.get(*v) {
                Some(g) => flat.extend(g.to_vec::<f64>()?),
                None => flat.resize(flat.len() + shape.iter().product::<usize>(), 0.0),
            }
        }
        Ok(flat)
    };
    gradcheck(forward, backward, &x, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square_forward(x: &[f64]) -> Result<Vec<f64>> {
        Ok(vec![x[0] * x[0] * x[1], x[1].sin()])
    }

    #[test]
    fn accepts_a_correct_backward() {
        let backward = |x: &[f64], g: &[f64]| {
            Ok(vec![
                2.0 * x[0] * x[1] * g[0],
                x[0] * x[0] * g[0] + x[1].cos() * g[1],
            ])
        };
        let report =
            gradcheck(square_forward, backward, &[0.7, -1.3], &Default::default()).unwrap();
        assert_eq!(
            (report.inputs, report.outputs, report.nonzero_entries),
            (2, 2, 3)
        );
    }

    #[test]
    fn rejects_a_wrong_backward() {
        // Missing the factor 2 in d(x0² x1)/dx0.
        let backward = |x: &[f64], g: &[f64]| {
            Ok(vec![
                x[0] * x[1] * g[0],
                x[0] * x[0] * g[0] + x[1].cos() * g[1],
            ])
        };
        let err =
            gradcheck(square_forward, backward, &[0.7, -1.3], &Default::default()).unwrap_err();
        assert!(
            matches!(
                err,
                GradcheckFailure::Mismatch {
                    output: 0,
                    input: 0,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn rejects_a_nondeterministic_backward() {
        let calls = std::cell::Cell::new(0u32);
        let backward = |x: &[f64], g: &[f64]| {
            calls.set(calls.get() + 1);
            let jitter = if calls.get() % 2 == 0 { 1e-12 } else { 0.0 };
            Ok(vec![
                2.0 * x[0] * x[1] * g[0] + jitter,
                x[0] * x[0] * g[0] + x[1].cos() * g[1],
            ])
        };
        let err =
            gradcheck(square_forward, backward, &[0.7, -1.3], &Default::default()).unwrap_err();
        assert!(
            matches!(err, GradcheckFailure::Nondeterministic { input: 0, .. }),
            "{err}"
        );
    }
}

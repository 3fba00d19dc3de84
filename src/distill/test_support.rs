//! Scaffolding shared by the method modules' unit tests: small detector shapes, f64 tensors, and a
//! gradcheck of a method's embedding entry with respect to the student tensors and the method's own
//! parameters.

use super::{DetectorShape, MethodGradients};
use crate::autograd::{gradcheck, GradcheckOptions, GradcheckReport};
use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::nn::{ParamId, ParamStore};
use crate::Tensor;

/// Four backbone stages and the FPN all `width` channels wide, 2 classes, GFL's 17 bins.
pub(crate) fn shape(width: usize) -> DetectorShape {
    DetectorShape {
        stage_channels: vec![width; 4],
        fpn_channels: width,
        num_classes: 2,
        reg_max: 16,
    }
}

/// An f64 tensor (the values must fill `shape`).
pub(crate) fn t(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).unwrap()
}

/// The values of `t` as f64.
pub(crate) fn vals(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

/// `values` recorded on `tape`, as leaves (with gradients) or as constants.
pub(crate) fn on_tape(tape: &Tape, values: &[Tensor], leaves: bool) -> Vec<Var> {
    values
        .iter()
        .map(|x| {
            let x = x.try_clone().unwrap();
            if leaves {
                tape.leaf(x)
            } else {
                tape.constant(x)
            }
        })
        .collect()
}

/// The value of the term called `name`, if the method reported it.
pub(crate) fn term(g: &MethodGradients, name: &str) -> Option<f64> {
    g.terms.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// The parameter entries a gradcheck perturbs: every entry of every trainable tensor (`None`), or up to
/// `n` entries per tensor spread evenly over it (`Some(n)`), for methods with large adapters.
pub(crate) fn trainable_entries(
    store: &ParamStore,
    per_tensor: Option<usize>,
) -> Vec<(ParamId, usize)> {
    let mut entries = Vec::new();
    for id in store.trainable() {
        let numel = store.value(id).numel();
        let take = per_tensor.unwrap_or(numel);
        let step = (numel / take.max(1)).max(1);
        entries.extend((0..numel).step_by(step).take(take).map(|i| (id, i)));
    }
    entries
}

/// Central-difference check of `compute`'s loss against its `student_grads` and `param_grads`, with
/// respect to every value of `student` and the parameter `entries`. `build` makes a fresh store (and
/// distiller) for each evaluation, in f64; the perturbed entries are written into it before `compute`
/// runs. Fails the test if the gradient is mostly zero (nothing would be checked).
pub(crate) fn gradcheck_method<D>(
    student: &[Tensor],
    entries: &[(ParamId, usize)],
    build: impl Fn() -> (ParamStore, D),
    compute: impl Fn(&D, &ParamStore, &[&Tensor]) -> Result<MethodGradients>,
) -> GradcheckReport {
    let (store, _) = build();
    let mut x: Vec<f64> = Vec::new();
    for s in student {
        x.extend(s.to_vec::<f64>().unwrap());
    }
    let student_len = x.len();
    for &(id, i) in entries {
        x.push(store.value(id).to_vec::<f64>().unwrap()[i]);
    }
    let evaluate = |x: &[f64]| -> Result<MethodGradients> {
        let (mut store, method) = build();
        let mut offset = 0;
        let mut perturbed = Vec::new();
        for s in student {
            let n = s.numel();
            perturbed.push(t(x[offset..offset + n].to_vec(), s.shape()));
            offset += n;
        }
        for (k, &(id, i)) in entries.iter().enumerate() {
            let mut v = store.value(id).to_vec::<f64>()?;
            v[i] = x[student_len + k];
            let shape = store.value(id).shape().to_vec();
            store.set(id, t(v, &shape))?;
        }
        let refs: Vec<&Tensor> = perturbed.iter().collect();
        compute(&method, &store, &refs)
    };
    let report = gradcheck(
        |x| Ok(vec![evaluate(x)?.loss]),
        |x, g| {
            let out = evaluate(x)?;
            let mut flat = Vec::with_capacity(x.len());
            for grad in &out.student_grads {
                flat.extend(grad.to_vec::<f64>()?.into_iter().map(|v| v * g[0]));
            }
            for &(id, i) in entries {
                let v = out
                    .param_grads
                    .iter()
                    .find(|(pid, _)| *pid == id)
                    .map(|(_, t)| t.to_vec::<f64>())
                    .transpose()?
                    .map_or(0.0, |v| v[i]);
                flat.push(v * g[0]);
            }
            Ok(flat)
        },
        &x,
        &GradcheckOptions::default(),
    )
    .unwrap();
    assert!(report.nonzero_entries > x.len() / 2, "{report:?}");
    report
}

//! Gradchecks, naive-loop forward checks, validation and CPU dtype tests for the graph_conv family. PyTorch
//! fixtures and CUDA parity live in tests/graph_conv.rs.

use super::*;
use crate::autograd::{gradcheck, GradcheckOptions};
use crate::testing::{assert_close, Rng};

fn tensor(data: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape).unwrap()
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Splits the concatenated gradcheck vector into tensors of `shapes`.
fn split(x: &[f64], shapes: &[&[usize]]) -> Vec<Tensor> {
    let mut offset = 0;
    shapes
        .iter()
        .map(|s| {
            let n = numel(s);
            offset += n;
            tensor(x[offset - n..offset].to_vec(), s)
        })
        .collect()
}

fn flat(tensors: &[&Tensor]) -> Vec<f64> {
    tensors
        .iter()
        .flat_map(|t| t.to_vec::<f64>().unwrap())
        .collect()
}

/// An adjacency with mixed signs, not symmetric, every degree comfortably > 0.
fn adjacency(rng: &mut Rng, batch: Option<usize>, m: usize) -> (Vec<f64>, Vec<usize>) {
    let b = batch.unwrap_or(1);
    let data: Vec<f64> = (0..b * m * m).map(|_| rng.uniform(-0.3, 1.0)).collect();
    for row in data.chunks(m) {
        assert!(1.0 + row.iter().sum::<f64>() > 0.3, "test adjacency degree");
    }
    let shape = match batch {
        Some(b) => vec![b, m, m],
        None => vec![m, m],
    };
    (data, shape)
}

/// Naive `Â` from the definition.
fn naive_a_hat(a: &[f64], batch: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0.0; a.len()];
    for b in 0..batch {
        let at = |p: usize, q: usize| a[(b * m + p) * m + q] + if p == q { 1.0 } else { 0.0 };
        let s: Vec<f64> = (0..m)
            .map(|p| 1.0 / (0..m).map(|q| at(p, q)).sum::<f64>().sqrt())
            .collect();
        for p in 0..m {
            for q in 0..m {
                out[(b * m + p) * m + q] = s[p] * at(p, q) * s[q];
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// Normalised adjacency

fn check_normalized_adjacency(batch: Option<usize>, m: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let (a, shape) = adjacency(&mut rng, batch, m);
    let forward = |x: &[f64]| {
        normalized_adjacency(&tensor(x.to_vec(), &shape))?
            .a_hat
            .to_vec()
    };
    let backward = |x: &[f64], g: &[f64]| {
        let a = tensor(x.to_vec(), &shape);
        let fwd = normalized_adjacency(&a)?;
        normalized_adjacency_backward(&a, &fwd.inv_sqrt_degree, &tensor(g.to_vec(), &shape))?
            .to_vec()
    };
    let report = gradcheck(forward, backward, &a, &GradcheckOptions::default())
        .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
    // m = 1: Â ≡ 1 whatever A is, so the (checked) Jacobian is zero.
    assert!(m == 1 || report.nonzero_entries > numel(&shape));
    assert_close(
        "forward vs naive",
        &forward(&a).unwrap(),
        &naive_a_hat(&a, batch.unwrap_or(1), m),
        1e-14,
    );
}

#[test]
fn gradcheck_normalized_adjacency() {
    check_normalized_adjacency(None, 6, 1);
    check_normalized_adjacency(Some(3), 4, 2);
    check_normalized_adjacency(None, 1, 3);
}

#[test]
fn adjacency_grad_matches_the_spec_formula_with_s_cubed() {
    // dA_ij = dÂ_ij s_i s_j − ½ s_i³ Σ_k (dÂ_ik Ã_ik + dÂ_ki Ã_ki) s_k, evaluated literally.
    let mut rng = Rng::new(8);
    let m = 5;
    let (a, shape) = adjacency(&mut rng, None, m);
    let g = rng.normal_vec(m * m);
    let at = |p: usize, q: usize| a[p * m + q] + if p == q { 1.0 } else { 0.0 };
    let s: Vec<f64> = (0..m)
        .map(|p| 1.0 / (0..m).map(|q| at(p, q)).sum::<f64>().sqrt())
        .collect();
    let mut want = vec![0.0; m * m];
    for i in 0..m {
        let sum: f64 = (0..m)
            .map(|k| (g[i * m + k] * at(i, k) + g[k * m + i] * at(k, i)) * s[k])
            .sum();
        for j in 0..m {
            want[i * m + j] = g[i * m + j] * s[i] * s[j] - 0.5 * s[i].powi(3) * sum;
        }
    }
    let a_t = tensor(a.clone(), &shape);
    let fwd = normalized_adjacency(&a_t).unwrap();
    let got = normalized_adjacency_backward(&a_t, &fwd.inv_sqrt_degree, &tensor(g, &shape))
        .unwrap()
        .to_vec::<f64>()
        .unwrap();
    assert_close("dA", &got, &want, 1e-14);
}

// ---------------------------------------------------------------------------------------------------------
// Graph convolution

struct ConvCase {
    a_shape: Vec<usize>,
    x_shape: Vec<usize>,
    w_shape: Vec<usize>,
    bias: bool,
}

fn conv_case(batch: Option<usize>, m: usize, din: usize, dout: usize, bias: bool) -> ConvCase {
    let lead: Vec<usize> = batch.into_iter().collect();
    let with = |tail: &[usize]| lead.iter().chain(tail).copied().collect::<Vec<_>>();
    ConvCase {
        a_shape: with(&[m, m]),
        x_shape: with(&[m, din]),
        w_shape: vec![din, dout],
        bias,
    }
}

impl ConvCase {
    fn shapes(&self) -> Vec<&[usize]> {
        let mut s: Vec<&[usize]> = vec![&self.a_shape, &self.x_shape, &self.w_shape];
        if self.bias {
            s.push(&self.w_shape[1..]);
        }
        s
    }

    fn run(&self, x: &[f64]) -> Result<GraphConvOutput> {
        let t = split(x, &self.shapes());
        graph_conv(&GraphConvInputs {
            adjacency: &t[0],
            x: &t[1],
            weight: &t[2],
            bias: t.get(3),
        })
    }

    fn grads(&self, x: &[f64], g: &[f64], adjacency_grad: bool) -> Result<GraphConvGrads> {
        let t = split(x, &self.shapes());
        let inputs = GraphConvInputs {
            adjacency: &t[0],
            x: &t[1],
            weight: &t[2],
            bias: t.get(3),
        };
        let fwd = graph_conv(&inputs)?;
        let g = tensor(g.to_vec(), fwd.output.shape());
        graph_conv_backward(&inputs, &fwd.saved, &g, adjacency_grad)
    }

    fn random_inputs(&self, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        let batch = if self.a_shape.len() == 3 {
            Some(self.a_shape[0])
        } else {
            None
        };
        let (mut v, _) = adjacency(&mut rng, batch, self.a_shape[self.a_shape.len() - 1]);
        let rest: usize = self.shapes()[1..].iter().map(|s| numel(s)).sum();
        v.extend(rng.normal_vec(rest));
        v
    }
}

fn check_graph_conv(case: &ConvCase, seed: u64) {
    let x0 = case.random_inputs(seed);
    let forward = |x: &[f64]| case.run(x)?.output.to_vec();
    let backward = |x: &[f64], g: &[f64]| {
        let grads = case.grads(x, g, true)?;
        let mut parts = vec![grads.adjacency.as_ref().unwrap(), &grads.x, &grads.weight];
        parts.extend(grads.bias.as_ref());
        Ok(flat(&parts))
    };
    let report = gradcheck(forward, backward, &x0, &GradcheckOptions::default())
        .unwrap_or_else(|e| panic!("{:?}: {e}", case.a_shape));
    assert!(report.nonzero_entries > x0.len());

    // Forward against loops straight from the definition.
    let t = split(&x0, &case.shapes());
    let batch = if case.a_shape.len() == 3 {
        case.a_shape[0]
    } else {
        1
    };
    let (m, din, dout) = (
        case.x_shape[case.x_shape.len() - 2],
        case.w_shape[0],
        case.w_shape[1],
    );
    let a_hat = naive_a_hat(&t[0].to_vec::<f64>().unwrap(), batch, m);
    let (x, w) = (t[1].to_vec::<f64>().unwrap(), t[2].to_vec::<f64>().unwrap());
    let mut want = vec![0.0; batch * m * dout];
    for b in 0..batch {
        for i in 0..m {
            for o in 0..dout {
                let mut v = t
                    .get(3)
                    .map_or(0.0, |bias| bias.to_vec::<f64>().unwrap()[o]);
                for j in 0..m {
                    for d in 0..din {
                        v +=
                            a_hat[(b * m + i) * m + j] * x[(b * m + j) * din + d] * w[d * dout + o];
                    }
                }
                want[(b * m + i) * dout + o] = v;
            }
        }
    }
    assert_close("forward vs naive", &forward(&x0).unwrap(), &want, 1e-13);

    // Without the adjacency gradient the other gradients are unchanged.
    let g = Rng::new(seed + 100).normal_vec(want.len());
    let with = case.grads(&x0, &g, true).unwrap();
    let without = case.grads(&x0, &g, false).unwrap();
    assert!(without.adjacency.is_none());
    assert_eq!(
        with.x.to_vec::<f64>().unwrap(),
        without.x.to_vec::<f64>().unwrap()
    );
    assert_eq!(
        with.weight.to_vec::<f64>().unwrap(),
        without.weight.to_vec::<f64>().unwrap()
    );
    assert_eq!(with.bias.is_some(), case.bias);
}

#[test]
fn gradcheck_graph_conv_unbatched_with_bias() {
    check_graph_conv(&conv_case(None, 5, 3, 4, true), 21);
}

#[test]
fn gradcheck_graph_conv_batched_without_bias() {
    check_graph_conv(&conv_case(Some(2), 4, 3, 2, false), 22);
}

#[test]
fn gradcheck_graph_conv_batched_with_bias_single_node() {
    check_graph_conv(&conv_case(Some(3), 1, 2, 3, true), 23);
}

// ---------------------------------------------------------------------------------------------------------
// GloRe

#[test]
fn gradcheck_glore_projection_and_reprojection() {
    let (b, s, n, l) = (2, 3, 4, 5);
    let mut rng = Rng::new(31);
    let shapes: [&[usize]; 2] = [&[b, s, l], &[b, n, l]];
    let x0 = rng.normal_vec(b * s * l + b * n * l);
    let forward = |x: &[f64]| {
        let t = split(x, &shapes);
        glore_project(&t[0], &t[1])?.to_vec()
    };
    let backward = |x: &[f64], g: &[f64]| {
        let t = split(x, &shapes);
        let (dv, dbp) = glore_project_backward(&t[0], &t[1], &tensor(g.to_vec(), &[b, s, n]))?;
        Ok(flat(&[&dv, &dbp]))
    };
    gradcheck(forward, backward, &x0, &GradcheckOptions::default()).unwrap();

    let shapes: [&[usize]; 2] = [&[b, s, n], &[b, n, l]];
    let x0 = rng.normal_vec(b * s * n + b * n * l);
    let forward = |x: &[f64]| {
        let t = split(x, &shapes);
        glore_reproject(&t[0], &t[1])?.to_vec()
    };
    let backward = |x: &[f64], g: &[f64]| {
        let t = split(x, &shapes);
        let (dy, dbp) = glore_reproject_backward(&t[0], &t[1], &tensor(g.to_vec(), &[b, s, l]))?;
        Ok(flat(&[&dy, &dbp]))
    };
    gradcheck(forward, backward, &x0, &GradcheckOptions::default()).unwrap();
}

/// `Z (I + Aᵀ) + b` from the definition.
fn naive_node_conv(z: &[f64], a: &[f64], bias: Option<&[f64]>, rows: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * n];
    for r in 0..rows {
        for o in 0..n {
            let mut v = z[r * n + o] + bias.map_or(0.0, |b| b[o]);
            for k in 0..n {
                v += z[r * n + k] * a[o * n + k];
            }
            out[r * n + o] = v;
        }
    }
    out
}

fn check_node_conv(b: usize, s: usize, n: usize, with_bias: bool, relu: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut shapes: Vec<&[usize]> = vec![&[0; 0], &[0; 0]];
    let (z_shape, a_shape, b_shape) = ([b, s, n], [n, n], [n]);
    shapes[0] = &z_shape;
    shapes[1] = &a_shape;
    if with_bias {
        shapes.push(&b_shape);
    }
    let total: usize = shapes.iter().map(|s| numel(s)).sum();
    let x0 = rng.normal_vec(total);
    let run = |x: &[f64], relu: bool| -> Result<Tensor> {
        let t = split(x, &shapes);
        glore_node_conv(
            &NodeConvInputs {
                z: &t[0],
                adjacency: &t[1],
                bias: t.get(2),
            },
            relu,
        )
    };
    let h = run(&x0, false).unwrap().to_vec::<f64>().unwrap();
    let t = split(&x0, &shapes);
    let bias = t.get(2).map(|b| b.to_vec::<f64>().unwrap());
    let want = naive_node_conv(
        &t[0].to_vec::<f64>().unwrap(),
        &t[1].to_vec::<f64>().unwrap(),
        bias.as_deref(),
        b * s,
        n,
    );
    assert_close("node conv vs naive", &h, &want, 1e-14);
    if relu {
        // Keep the ReLU's kink out of reach of the finite differences.
        let closest = h.iter().fold(f64::INFINITY, |m, v| m.min(v.abs()));
        assert!(closest > 1e-3, "H too close to 0: {closest}");
        assert!(h.iter().any(|&v| v < 0.0) && h.iter().any(|&v| v > 0.0));
    }
    let forward = |x: &[f64]| run(x, relu)?.to_vec();
    let backward = |x: &[f64], g: &[f64]| {
        let t = split(x, &shapes);
        let inputs = NodeConvInputs {
            z: &t[0],
            adjacency: &t[1],
            bias: t.get(2),
        };
        let out = glore_node_conv(&inputs, relu)?;
        let grads =
            glore_node_conv_backward(&inputs, relu.then_some(&out), &tensor(g.to_vec(), &z_shape))?;
        let mut parts = vec![&grads.z, &grads.adjacency];
        parts.extend(grads.bias.as_ref());
        Ok(flat(&parts))
    };
    let report = gradcheck(forward, backward, &x0, &GradcheckOptions::default())
        .unwrap_or_else(|e| panic!("relu={relu} bias={with_bias}: {e}"));
    assert!(report.nonzero_entries > 0);
}

#[test]
fn gradcheck_glore_node_conv() {
    check_node_conv(2, 3, 4, true, false, 41);
    check_node_conv(1, 5, 3, false, false, 42);
    check_node_conv(2, 3, 4, true, true, 43);
}

// ---------------------------------------------------------------------------------------------------------
// Validation

fn err<T: std::fmt::Debug>(r: Result<T>) -> String {
    r.unwrap_err().to_string()
}

fn f64s(shape: &[usize], v: f64) -> Tensor {
    tensor(vec![v; numel(shape)], shape)
}

#[test]
fn normalized_adjacency_rejects_bad_graphs() {
    // A zero degree: row 1 sums to -1 exactly.
    let a = tensor(
        vec![0.5, 0.5, -0.5, -0.5, -0.25, -0.25, 0.0, 0.0, 0.3],
        &[3, 3],
    );
    let e = err(normalized_adjacency(&a));
    assert!(
        e.contains("`adjacency`") && e.contains("> 0") && e.contains("row 1"),
        "{e}"
    );
    // A negative degree in batch entry 1, row 0.
    let mut v = vec![0.1; 8];
    v[4] = -3.0;
    let e = err(normalized_adjacency(&tensor(v, &[2, 2, 2])));
    assert!(e.contains("batch 1, row 0") && e.contains("-1.9"), "{e}");
    // Non-finite values, named by position.
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut v = vec![0.1; 9];
        v[5] = bad;
        let e = err(normalized_adjacency(&tensor(v, &[3, 3])));
        assert!(
            e.contains("finite") && e.contains("row 1, column 2") && e.contains(&bad.to_string()),
            "{e}"
        );
    }
    // f32 storage: a row sum beyond the f32 range is non-finite too.
    let big = tensor(vec![3e38, 3e38, 0.0, 0.0], &[2, 2])
        .to_dtype(DType::F32)
        .unwrap();
    let e = err(normalized_adjacency(&big));
    assert!(e.contains("finite") && e.contains("row 0"), "{e}");
    // Shapes and dtypes.
    let e = err(normalized_adjacency(&f64s(&[2, 3], 0.1)));
    assert!(e.contains("`adjacency`") && e.contains("square"), "{e}");
    let e = err(normalized_adjacency(&f64s(&[4], 0.1)));
    assert!(e.contains("[4]"), "{e}");
    let labels = Tensor::from_vec(vec![0i64; 4], &[2, 2]).unwrap();
    let e = err(normalized_adjacency(&labels));
    assert!(e.contains("i64"), "{e}");
}

#[test]
fn normalized_adjacency_backward_validates() {
    let a = f64s(&[3, 3], 0.2);
    let fwd = normalized_adjacency(&a).unwrap();
    let e = err(normalized_adjacency_backward(
        &a,
        &fwd.inv_sqrt_degree,
        &f64s(&[3, 2], 1.0),
    ));
    assert!(e.contains("`grad_a_hat`") && e.contains("[3, 3]"), "{e}");
    let e = err(normalized_adjacency_backward(&a, &f64s(&[2], 1.0), &a));
    assert!(e.contains("`inv_sqrt_degree`"), "{e}");
    let s32 = fwd.inv_sqrt_degree.to_dtype(DType::F32).unwrap();
    let e = err(normalized_adjacency_backward(&a, &s32, &a));
    assert!(e.contains("`inv_sqrt_degree`") && e.contains("f64"), "{e}");
    let g32 = a.to_dtype(DType::F32).unwrap();
    let e = err(normalized_adjacency_backward(
        &a,
        &fwd.inv_sqrt_degree,
        &g32,
    ));
    assert!(e.contains("`grad_a_hat`") && e.contains("f32"), "{e}");
}

#[test]
fn graph_conv_rejects_bad_inputs() {
    let a = f64s(&[4, 4], 0.1);
    let ab = f64s(&[2, 4, 4], 0.1);
    let x = f64s(&[4, 3], 1.0);
    let w = f64s(&[3, 5], 1.0);
    let b = f64s(&[5], 1.0);
    let call = |a: &Tensor, x: &Tensor, w: &Tensor, b: Option<&Tensor>| {
        graph_conv(&GraphConvInputs {
            adjacency: a,
            x,
            weight: w,
            bias: b,
        })
        .map(|_| ())
    };
    assert!(call(&a, &x, &w, Some(&b)).is_ok());
    for (e, want) in [
        (
            err(call(&a, &f64s(&[5, 3], 1.0), &w, None)),
            "`x`: expected shape [4, Din]",
        ),
        (
            err(call(&ab, &x, &w, None)),
            "`x`: expected shape [2, 4, Din]",
        ),
        (
            err(call(&ab, &f64s(&[3, 4, 3], 1.0), &w, None)),
            "[2, 4, Din]",
        ),
        (
            err(call(&a, &x, &f64s(&[4, 5], 1.0), None)),
            "`weight`: expected shape [3, Dout]",
        ),
        (err(call(&a, &x, &f64s(&[3, 5, 1], 1.0), None)), "`weight`"),
        (
            err(call(&a, &x, &w, Some(&f64s(&[4], 1.0)))),
            "`bias`: expected shape [5]",
        ),
        (err(call(&f64s(&[4, 5], 0.1), &x, &w, None)), "`adjacency`"),
        (
            err(call(&a, &x.to_dtype(DType::F32).unwrap(), &w, None)),
            "`x`: expected dtype f64, got f32",
        ),
        (
            err(call(&a, &x, &w, Some(&b.to_dtype(DType::BF16).unwrap()))),
            "`bias`: expected dtype f64, got bf16",
        ),
    ] {
        assert!(e.contains(want), "{e} (wanted {want})");
    }
    // Zero degree and non-finite adjacency are reported by the convolution too.
    let mut v = vec![0.1; 16];
    v[8..12].copy_from_slice(&[-0.5, -0.25, -0.5, 0.25]);
    let e = err(call(&tensor(v, &[4, 4]), &x, &w, None));
    assert!(e.contains("row 2") && e.contains("> 0"), "{e}");
    let mut v = vec![0.1; 16];
    v[3] = f64::NAN;
    let e = err(call(&tensor(v, &[4, 4]), &x, &w, None));
    assert!(e.contains("NaN") && e.contains("row 0, column 3"), "{e}");
}

#[test]
fn graph_conv_backward_validates_gradient_and_saved_context() {
    let (a, x, w) = (f64s(&[4, 4], 0.1), f64s(&[4, 3], 1.0), f64s(&[3, 5], 1.0));
    let inputs = GraphConvInputs {
        adjacency: &a,
        x: &x,
        weight: &w,
        bias: None,
    };
    let fwd = graph_conv(&inputs).unwrap();
    let g = f64s(&[4, 5], 1.0);
    assert!(graph_conv_backward(&inputs, &fwd.saved, &g, true).is_ok());
    let e = err(graph_conv_backward(
        &inputs,
        &fwd.saved,
        &f64s(&[4, 3], 1.0),
        true,
    ));
    assert!(e.contains("`grad_output`: expected shape [4, 5]"), "{e}");
    let e = err(graph_conv_backward(
        &inputs,
        &fwd.saved,
        &g.to_dtype(DType::F32).unwrap(),
        true,
    ));
    assert!(e.contains("`grad_output`") && e.contains("f32"), "{e}");
    let other = graph_conv(&GraphConvInputs {
        adjacency: &f64s(&[3, 3], 0.1),
        x: &f64s(&[3, 3], 1.0),
        weight: &w,
        bias: None,
    })
    .unwrap();
    let e = err(graph_conv_backward(&inputs, &other.saved, &g, true));
    assert!(e.contains("`saved.a_hat`"), "{e}");
    let saved32 = GraphConvSaved {
        a_hat: fwd.saved.a_hat.to_dtype(DType::F32).unwrap(),
        inv_sqrt_degree: fwd.saved.inv_sqrt_degree.try_clone().unwrap(),
        xw: fwd.saved.xw.try_clone().unwrap(),
    };
    let e = err(graph_conv_backward(&inputs, &saved32, &g, true));
    assert!(e.contains("`saved.a_hat`") && e.contains("f64"), "{e}");
}

#[test]
fn empty_graphs_give_empty_outputs_and_zero_gradients() {
    for (a_shape, x_shape) in [
        (vec![0, 0], vec![0, 3]),
        (vec![2, 0, 0], vec![2, 0, 3]),
        (vec![0, 4, 4], vec![0, 4, 3]),
    ] {
        let (a, x, w, b) = (
            f64s(&a_shape, 0.1),
            f64s(&x_shape, 1.0),
            f64s(&[3, 2], 1.0),
            f64s(&[2], 1.0),
        );
        let inputs = GraphConvInputs {
            adjacency: &a,
            x: &x,
            weight: &w,
            bias: Some(&b),
        };
        let fwd = graph_conv(&inputs).unwrap();
        let mut out_shape = x_shape.clone();
        *out_shape.last_mut().unwrap() = 2;
        assert_eq!(fwd.output.shape(), &out_shape[..]);
        assert_eq!(fwd.output.numel(), 0);
        let grads = graph_conv_backward(&inputs, &fwd.saved, &f64s(&out_shape, 1.0), true).unwrap();
        assert_eq!(grads.x.shape(), &x_shape[..]);
        assert_eq!(grads.weight.to_vec::<f64>().unwrap(), vec![0.0; 6]);
        assert_eq!(grads.bias.unwrap().to_vec::<f64>().unwrap(), vec![0.0; 2]);
        assert_eq!(grads.adjacency.unwrap().shape(), &a_shape[..]);
        let n = normalized_adjacency(&a).unwrap();
        assert_eq!(n.a_hat.shape(), &a_shape[..]);
    }
    // Empty feature dimensions are fine too.
    let a = f64s(&[3, 3], 0.1);
    let fwd = graph_conv(&GraphConvInputs {
        adjacency: &a,
        x: &f64s(&[3, 0], 1.0),
        weight: &f64s(&[0, 2], 1.0),
        bias: None,
    })
    .unwrap();
    assert_eq!(fwd.output.to_vec::<f64>().unwrap(), vec![0.0; 6]);
}

#[test]
fn glore_rejects_bad_shapes() {
    let v = f64s(&[2, 3, 5], 1.0);
    let bp = f64s(&[2, 4, 5], 1.0);
    assert_eq!(glore_project(&v, &bp).unwrap().shape(), &[2, 3, 4]);
    let e = err(glore_project(&v, &f64s(&[2, 4, 6], 1.0)));
    assert!(e.contains("`bp`: expected shape [2, N, 5]"), "{e}");
    let e = err(glore_project(&v, &f64s(&[1, 4, 5], 1.0)));
    assert!(e.contains("`bp`"), "{e}");
    let e = err(glore_project(&f64s(&[3, 5], 1.0), &bp));
    assert!(e.contains("`v`: expected shape [B, S, L]"), "{e}");
    let e = err(glore_project_backward(&v, &bp, &f64s(&[2, 4, 3], 1.0)));
    assert!(e.contains("`grad_z`: expected shape [2, 3, 4]"), "{e}");
    let e = err(glore_project(&v, &bp.to_dtype(DType::F32).unwrap()));
    assert!(e.contains("`bp`: expected dtype f64"), "{e}");

    let y = f64s(&[2, 3, 4], 1.0);
    assert_eq!(glore_reproject(&y, &bp).unwrap().shape(), &[2, 3, 5]);
    let e = err(glore_reproject(&y, &f64s(&[2, 3, 5], 1.0)));
    assert!(e.contains("`bp`: expected shape [2, 4, L]"), "{e}");
    let e = err(glore_reproject_backward(&y, &bp, &f64s(&[2, 3, 4], 1.0)));
    assert!(e.contains("`grad_output`: expected shape [2, 3, 5]"), "{e}");

    let z = f64s(&[2, 3, 4], 1.0);
    let a = f64s(&[4, 4], 0.1);
    let call = |a: &Tensor, b: Option<&Tensor>| {
        glore_node_conv(
            &NodeConvInputs {
                z: &z,
                adjacency: a,
                bias: b,
            },
            false,
        )
    };
    assert!(call(&a, None).is_ok());
    let e = err(call(&f64s(&[3, 3], 0.1), None));
    assert!(e.contains("`adjacency`: expected shape [4, 4]"), "{e}");
    let e = err(call(&a, Some(&f64s(&[3], 0.1))));
    assert!(e.contains("`bias`: expected shape [4]"), "{e}");
    let inputs = NodeConvInputs {
        z: &z,
        adjacency: &a,
        bias: None,
    };
    let e = err(glore_node_conv_backward(
        &inputs,
        None,
        &f64s(&[2, 4, 3], 1.0),
    ));
    assert!(e.contains("`grad_output`"), "{e}");
    let e = err(glore_node_conv_backward(
        &inputs,
        Some(&f64s(&[2, 3, 3], 1.0)),
        &z,
    ));
    assert!(e.contains("`relu_output`"), "{e}");
}

#[test]
fn empty_glore_problems() {
    for (b, s, n, l) in [(0, 3, 4, 5), (2, 0, 4, 5), (2, 3, 0, 5), (2, 3, 4, 0)] {
        let (v, bp, y) = (
            f64s(&[b, s, l], 1.0),
            f64s(&[b, n, l], 1.0),
            f64s(&[b, s, n], 1.0),
        );
        let z = glore_project(&v, &bp).unwrap();
        assert_eq!(z.shape(), &[b, s, n]);
        assert!(z.to_vec::<f64>().unwrap().iter().all(|&x| x == 0.0));
        let (dv, dbp) = glore_project_backward(&v, &bp, &y).unwrap();
        assert_eq!((dv.shape(), dbp.shape()), (v.shape(), bp.shape()));
        let out = glore_reproject(&y, &bp).unwrap();
        assert_eq!(out.shape(), &[b, s, l]);
        let (dy, dbp) = glore_reproject_backward(&y, &bp, &f64s(&[b, s, l], 1.0)).unwrap();
        assert_eq!((dy.shape(), dbp.shape()), (y.shape(), bp.shape()));
        assert!(dy.to_vec::<f64>().unwrap().iter().all(|&x| x == 0.0));
        let a = f64s(&[n, n], 0.1);
        let bias = f64s(&[n], 0.1);
        let inputs = NodeConvInputs {
            z: &y,
            adjacency: &a,
            bias: Some(&bias),
        };
        assert_eq!(glore_node_conv(&inputs, true).unwrap().shape(), y.shape());
        let grads = glore_node_conv_backward(&inputs, None, &y).unwrap();
        assert_eq!(grads.adjacency.shape(), &[n, n]);
        assert!(
            y.numel() > 0
                || grads
                    .adjacency
                    .to_vec::<f64>()
                    .unwrap()
                    .iter()
                    .all(|&x| x == 0.0)
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Dtypes on the CPU

#[test]
fn half_and_f32_storage_match_f64_on_cpu() {
    let case = conv_case(Some(2), 7, 5, 6, true);
    let x0 = case.random_inputs(51);
    let t64 = split(&x0, &case.shapes());
    let g = Rng::new(52).normal_vec(2 * 7 * 6);
    for (dtype, tol) in [(DType::F32, 1e-6), (DType::F16, 5e-3), (DType::BF16, 2e-2)] {
        // The reference sees the same rounded inputs.
        let t: Vec<Tensor> = t64.iter().map(|t| t.to_dtype(dtype).unwrap()).collect();
        let r: Vec<Tensor> = t.iter().map(|t| t.to_dtype(DType::F64).unwrap()).collect();
        let run = |t: &[Tensor], g: &Tensor| {
            let inputs = GraphConvInputs {
                adjacency: &t[0],
                x: &t[1],
                weight: &t[2],
                bias: t.get(3),
            };
            let fwd = graph_conv(&inputs).unwrap();
            assert_eq!(fwd.saved.a_hat.dtype(), compute_dtype(t[0].dtype()));
            let grads = graph_conv_backward(&inputs, &fwd.saved, g, true).unwrap();
            vec![
                fwd.output,
                grads.x,
                grads.weight,
                grads.bias.unwrap(),
                grads.adjacency.unwrap(),
            ]
        };
        let g_t = tensor(g.clone(), &[2, 7, 6]).to_dtype(dtype).unwrap();
        let got = run(&t, &g_t);
        let want = run(&r, &g_t.to_dtype(DType::F64).unwrap());
        for (name, (got, want)) in ["output", "dx", "dw", "db", "da"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            assert_eq!(got.dtype(), dtype, "{name}");
            assert_close(
                &format!("{name} {dtype}"),
                &got.to_vec::<f64>().unwrap(),
                &want.to_vec::<f64>().unwrap(),
                tol,
            );
        }
    }
}

#[test]
fn half_storage_node_conv_on_cpu() {
    let mut rng = Rng::new(61);
    let z = tensor(rng.normal_vec(2 * 3 * 4), &[2, 3, 4]);
    let a = tensor(rng.normal_vec(16), &[4, 4]);
    let b = tensor(rng.normal_vec(4), &[4]);
    let g = tensor(rng.normal_vec(24), &[2, 3, 4]);
    for dtype in [DType::F16, DType::BF16] {
        let cast = |t: &Tensor| t.to_dtype(dtype).unwrap();
        let (zh, ah, bh, gh) = (cast(&z), cast(&a), cast(&b), cast(&g));
        let up = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let half_inputs = NodeConvInputs {
            z: &zh,
            adjacency: &ah,
            bias: Some(&bh),
        };
        let (zr, ar, br) = (up(&zh), up(&ah), up(&bh));
        let ref_inputs = NodeConvInputs {
            z: &zr,
            adjacency: &ar,
            bias: Some(&br),
        };
        let out = glore_node_conv(&half_inputs, true).unwrap();
        let want = glore_node_conv(&ref_inputs, true).unwrap();
        assert_eq!(out.dtype(), dtype);
        assert_close(
            "node conv",
            &out.to_vec::<f64>().unwrap(),
            &want.to_vec::<f64>().unwrap(),
            1e-2,
        );
        let grads = glore_node_conv_backward(&half_inputs, Some(&out), &gh).unwrap();
        let want = glore_node_conv_backward(&ref_inputs, Some(&want), &up(&gh)).unwrap();
        for (got, want) in [
            (&grads.z, &want.z),
            (&grads.adjacency, &want.adjacency),
            (grads.bias.as_ref().unwrap(), want.bias.as_ref().unwrap()),
        ] {
            assert_close(
                "node conv grads",
                &got.to_vec::<f64>().unwrap(),
                &want.to_vec::<f64>().unwrap(),
                2e-2,
            );
        }
    }
}

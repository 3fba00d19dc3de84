//! The graph_conv family against PyTorch (golden fixtures from scripts/make_fixtures_graph_conv.py, via the
//! `detkd parity` runner) and CUDA against the CPU reference. GPU tests print `SKIP` without a driver and
//! fail under `DETKD_REQUIRE_GPU=1`.

use detkd::ops::graph_conv::{
    glore_node_conv, glore_node_conv_backward, glore_project, glore_project_backward,
    glore_reproject, glore_reproject_backward, graph_conv, graph_conv_backward,
    normalized_adjacency, normalized_adjacency_backward, GraphConvInputs, NodeConvInputs,
};
use detkd::tensor::io::{self, NamedTensors};
use detkd::testing::{assert_close, host, Rng};
use detkd::{DType, Device, Tensor};

/// Every fixture, embedded so the test binary runs anywhere (e.g. carried to a GPU machine).
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/graph_conv/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 11] = fixtures![
    "adjacency_similarity",
    "adjacency_batched_asymmetric",
    "graph_conv_similarity_bias",
    "graph_conv_batched",
    "graph_conv_fixed_graph",
    "graph_conv_empty",
    "glore_project",
    "glore_node_conv",
    "glore_node_conv_relu",
    "glore_node_conv_no_bias",
    "glore_reproject",
];

/// Runs the fixture's op with `dtype` on `device` and compares every result with PyTorch's.
fn check_fixture(name: &str, bytes: &[u8], dtype: DType, device: &Device, tol: f64) {
    let mut inputs = io::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    inputs.metadata.insert("dtype".into(), dtype.name().into());
    let results = detkd::parity::run(&inputs, device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected: Vec<&String> = inputs
        .tensors
        .keys()
        .filter(|k| k.starts_with("expected."))
        .collect();
    assert!(
        expected.len() >= 2,
        "{name}: fixture has no expected output and gradient"
    );
    for key in expected {
        let result_name = &key["expected.".len()..];
        let got = results
            .get(result_name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = inputs.get(key).unwrap();
        assert_eq!(got.shape(), want.shape(), "{name}/{result_name}");
        assert_close(
            &format!("{name}/{result_name} ({dtype} on {device})"),
            &got.to_vec::<f64>().unwrap(),
            &want.to_vec::<f64>().unwrap(),
            tol,
        );
    }
    // Nothing beyond what PyTorch computed (a missing `grad_adjacency` for a fixed graph, say).
    for name_out in results.tensors.keys() {
        let known = name_out == "output"
            || name_out == "inv_sqrt_degree"
            || inputs.tensors.contains_key(&format!("expected.{name_out}"));
        assert!(known, "{name}: unexpected result {name_out}");
    }
}

#[test]
fn cpu_matches_pytorch_fixtures() {
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F64, &Device::Cpu, 1e-12);
        check_fixture(name, bytes, DType::F32, &Device::Cpu, 1e-5);
    }
}

#[test]
fn fixtures_cover_every_op_and_the_edge_cases() {
    let all: Vec<NamedTensors> = FIXTURES
        .iter()
        .map(|(_, b)| io::from_bytes(b).unwrap())
        .collect();
    for op in [
        "normalized_adjacency",
        "graph_conv",
        "glore_project",
        "glore_node_conv",
        "glore_reproject",
    ] {
        assert!(all.iter().any(|f| f.metadata["op"] == op), "{op}");
    }
    let has = |pred: &dyn Fn(&NamedTensors) -> bool| all.iter().any(pred);
    assert!(has(
        &|f| f.metadata["op"] == "graph_conv" && f.get("adjacency").unwrap().shape() == [0, 0]
    ));
    assert!(has(&|f| f
        .metadata
        .get("adjacency_grad")
        .is_some_and(|v| v == "false")));
    assert!(has(&|f| f
        .metadata
        .get("relu")
        .is_some_and(|v| v == "true")));
    assert!(has(
        &|f| f.metadata["op"] == "graph_conv" && f.get("adjacency").unwrap().rank() == 3
    ));
    // An asymmetric adjacency: the gradient formula must not assume symmetry.
    assert!(has(&|f| {
        let a = f.get("adjacency").unwrap();
        a.rank() == 3 && {
            let (m, v) = (a.shape()[1], a.to_vec::<f64>().unwrap());
            (0..m).any(|p| (0..m).any(|q| v[p * m + q] != v[q * m + p]))
        }
    }));
}

#[test]
fn parity_rejects_bad_metadata_and_missing_tensors() {
    let find = |n: &str| FIXTURES.iter().find(|(name, _)| *name == n).unwrap().1;
    let mut inputs = io::from_bytes(find("graph_conv_batched")).unwrap();
    inputs
        .metadata
        .insert("adjacency_grad".into(), "maybe".into());
    let e = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`adjacency_grad`: expected `true` or `false`"),
        "{e}"
    );
    let mut inputs = io::from_bytes(find("glore_node_conv_relu")).unwrap();
    inputs.tensors.remove("z");
    let e = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("z"), "{e}");
    let mut inputs = io::from_bytes(find("glore_project")).unwrap();
    let bp = inputs.tensors.remove("bp").unwrap();
    inputs
        .tensors
        .insert("bp".into(), bp.reshape(&[2, 6, 10]).unwrap());
    let e = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`bp`"), "{e}");
}

// ---------------------------------------------------------------------------------------------------------
// CUDA vs CPU

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

const DTYPES: [(DType, f64, f64); 3] = [
    (DType::F32, 1e-5, 1e-4),
    (DType::F16, 1e-2, 1e-2),
    (DType::BF16, 1e-2, 1e-2),
];

/// With one node `Â ≡ 1`, so `dA` is exactly 0 and only rounding noise remains: it must be small next to
/// `scale` (the gradients that flow through the same products).
fn assert_near_zero(what: &str, got: &[f64], scale: &[f64], tol: f64) {
    let reference = scale.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let worst = got.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(
        worst <= tol * reference,
        "{what}: {worst:e} should be ~0 next to {reference:e}"
    );
}

/// Node counts straddling the 32-column tiles and the 256-thread row blocks.
const NODES: [usize; 8] = [1, 2, 7, 31, 33, 64, 257, 300];

/// A random graph with entries in [-0.1, 1) (asymmetric, some negative, every degree > 0).
fn random_graph(rng: &mut Rng, batch: usize, m: usize) -> Vec<f64> {
    (0..batch * m * m).map(|_| rng.uniform(-0.1, 1.0)).collect()
}

#[test]
fn cuda_graph_conv_matches_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("graph_conv::cuda_graph_conv_matches_cpu") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(2024);
    for case in 0..16 {
        let m = NODES[rng.below(NODES.len())];
        let (din, dout) = (1 + rng.below(70), 1 + rng.below(70));
        let batched = rng.below(2) == 1;
        let batch = if batched { 1 + rng.below(3) } else { 1 };
        let with_bias = rng.below(3) > 0;
        let lead: Vec<usize> = if batched { vec![batch] } else { vec![] };
        let shape = |tail: &[usize]| lead.iter().chain(tail).copied().collect::<Vec<_>>();
        let (a_shape, x_shape, y_shape) = (shape(&[m, m]), shape(&[m, din]), shape(&[m, dout]));
        let a = random_graph(&mut rng, batch, m);
        let x = rng.normal_vec(batch * m * din);
        let w = rng.normal_vec(din * dout);
        let b = rng.normal_vec(dout);
        let g = rng.normal_vec(batch * m * dout);
        for (dtype, fwd_tol, bwd_tol) in DTYPES {
            let run = |device: &Device, compute: DType| {
                let t = |v: &[f64], s: &[usize]| {
                    host(v, s, dtype)
                        .to_dtype(compute)
                        .unwrap()
                        .to_device(device)
                        .unwrap()
                };
                let (at, xt, wt, bt, gt) = (
                    t(&a, &a_shape),
                    t(&x, &x_shape),
                    t(&w, &[din, dout]),
                    t(&b, &[dout]),
                    t(&g, &y_shape),
                );
                let inputs = GraphConvInputs {
                    adjacency: &at,
                    x: &xt,
                    weight: &wt,
                    bias: with_bias.then_some(&bt),
                };
                let fwd = graph_conv(&inputs).unwrap();
                let grads = graph_conv_backward(&inputs, &fwd.saved, &gt, true).unwrap();
                let mut out = vec![
                    values(&fwd.output),
                    values(&grads.x),
                    values(&grads.weight),
                    values(grads.adjacency.as_ref().unwrap()),
                    values(&fwd.saved.a_hat),
                ];
                assert_eq!(fwd.output.dtype(), compute);
                if let Some(db) = &grads.bias {
                    out.push(values(db));
                }
                out
            };
            // Reference: f64 CPU on the inputs as rounded to `dtype`.
            let want = run(&Device::Cpu, DType::F64);
            let got = run(&gpu, dtype);
            let what =
                format!("case {case}: {dtype} B={batch} m={m} {din}->{dout} bias={with_bias}");
            for (i, (got_i, want_i)) in got.iter().zip(&want).enumerate() {
                let tol = if i == 0 || i == 4 { fwd_tol } else { bwd_tol };
                let name = ["output", "dx", "dw", "da", "a_hat", "db"][i];
                if name == "da" && m == 1 {
                    // Next to dx, which flows through the same products.
                    assert_near_zero(&format!("{name} {what}"), got_i, &want[1], tol);
                } else {
                    assert_close(&format!("{name} {what}"), got_i, want_i, tol);
                }
            }
        }
    }
}

#[test]
fn cuda_normalized_adjacency_matches_cpu() {
    let Some(gpu) = detkd::cuda::gpu_for_test("graph_conv::cuda_normalized_adjacency") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(77);
    for (batch, m) in [
        (None, 1),
        (None, 33),
        (Some(3), 7),
        (Some(2), 257),
        (None, 300),
    ] {
        let b = batch.unwrap_or(1);
        let shape: Vec<usize> = batch.into_iter().chain([m, m]).collect();
        let a = random_graph(&mut rng, b, m);
        let g = rng.normal_vec(b * m * m);
        for (dtype, fwd_tol, bwd_tol) in DTYPES {
            let a_ref = host(&a, &shape, dtype).to_dtype(DType::F64).unwrap();
            let g_ref = host(&g, &shape, dtype).to_dtype(DType::F64).unwrap();
            let want = normalized_adjacency(&a_ref).unwrap();
            let want_grad =
                normalized_adjacency_backward(&a_ref, &want.inv_sqrt_degree, &g_ref).unwrap();
            let a_gpu = host(&a, &shape, dtype).to_device(&gpu).unwrap();
            let got = normalized_adjacency(&a_gpu).unwrap();
            assert_eq!(got.a_hat.dtype(), dtype);
            assert_eq!(got.inv_sqrt_degree.dtype(), DType::F32);
            let got_grad = normalized_adjacency_backward(
                &a_gpu,
                &got.inv_sqrt_degree,
                &host(&g, &shape, dtype).to_device(&gpu).unwrap(),
            )
            .unwrap();
            let what = format!("{dtype} {shape:?}");
            assert_close(
                &format!("a_hat {what}"),
                &values(&got.a_hat),
                &values(&want.a_hat),
                fwd_tol,
            );
            assert_close(
                &format!("s {what}"),
                &values(&got.inv_sqrt_degree),
                &values(&want.inv_sqrt_degree),
                1e-6,
            );
            if m == 1 {
                assert_near_zero(&format!("dA {what}"), &values(&got_grad), &g, bwd_tol);
            } else {
                assert_close(
                    &format!("dA {what}"),
                    &values(&got_grad),
                    &values(&want_grad),
                    bwd_tol,
                );
            }
        }
    }
}

#[test]
fn cuda_glore_matches_cpu() {
    let Some(gpu) = detkd::cuda::gpu_for_test("graph_conv::cuda_glore_matches_cpu") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(99);
    for case in 0..8 {
        let (b, s, n, l) = (
            1 + rng.below(3),
            1 + rng.below(140),
            [1, 7, 32, 33, 64, 65][rng.below(6)],
            1 + rng.below(700),
        );
        let with_bias = rng.below(2) == 1;
        let relu = rng.below(2) == 1;
        let v = rng.normal_vec(b * s * l);
        let bp = rng.normal_vec(b * n * l);
        let z = rng.normal_vec(b * s * n);
        let a = rng.normal_vec(n * n);
        let bias = rng.normal_vec(n);
        let g_sn = rng.normal_vec(b * s * n);
        let g_sl = rng.normal_vec(b * s * l);
        for (dtype, fwd_tol, bwd_tol) in DTYPES {
            let run = |device: &Device, compute: DType| -> Vec<(&'static str, Vec<f64>, bool)> {
                let t = |v: &[f64], s: &[usize]| {
                    host(v, s, dtype)
                        .to_dtype(compute)
                        .unwrap()
                        .to_device(device)
                        .unwrap()
                };
                let (vt, bpt, zt, at, biast) = (
                    t(&v, &[b, s, l]),
                    t(&bp, &[b, n, l]),
                    t(&z, &[b, s, n]),
                    t(&a, &[n, n]),
                    t(&bias, &[n]),
                );
                let (g_snt, g_slt) = (t(&g_sn, &[b, s, n]), t(&g_sl, &[b, s, l]));
                let proj = glore_project(&vt, &bpt).unwrap();
                let (dv, dbp) = glore_project_backward(&vt, &bpt, &g_snt).unwrap();
                let inputs = NodeConvInputs {
                    z: &zt,
                    adjacency: &at,
                    bias: with_bias.then_some(&biast),
                };
                let h = glore_node_conv(&inputs, relu).unwrap();
                let hg = glore_node_conv_backward(&inputs, relu.then_some(&h), &g_snt).unwrap();
                let re = glore_reproject(&zt, &bpt).unwrap();
                let (dy, dbp2) = glore_reproject_backward(&zt, &bpt, &g_slt).unwrap();
                let mut out = vec![
                    ("project", values(&proj), true),
                    ("project dv", values(&dv), false),
                    ("project dbp", values(&dbp), false),
                    ("node conv", values(&h), true),
                    ("node conv dz", values(&hg.z), false),
                    ("node conv da", values(&hg.adjacency), false),
                    ("reproject", values(&re), true),
                    ("reproject dy", values(&dy), false),
                    ("reproject dbp", values(&dbp2), false),
                ];
                if let Some(db) = &hg.bias {
                    out.push(("node conv db", values(db), false));
                }
                out
            };
            let want = run(&Device::Cpu, DType::F64);
            let got = run(&gpu, dtype);
            assert_eq!(got.len(), want.len());
            for ((name, got, is_fwd), (_, want, _)) in got.iter().zip(&want) {
                let tol = if *is_fwd { fwd_tol } else { bwd_tol };
                let what = format!(
                    "case {case} {name}: {dtype} B={b} S={s} N={n} L={l} bias={with_bias} relu={relu}"
                );
                assert_close(&what, got, want, tol);
            }
        }
    }
}

#[test]
fn cuda_backward_is_bitwise_reproducible() {
    let Some(gpu) = detkd::cuda::gpu_for_test("graph_conv::cuda_backward_is_bitwise_reproducible")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(5);
    let (batch, m, din, dout) = (2, 300, 40, 24);
    let t = |v: Vec<f64>, s: &[usize]| host(&v, s, DType::F32).to_device(&gpu).unwrap();
    let a = t(random_graph(&mut rng, batch, m), &[batch, m, m]);
    let x = t(rng.normal_vec(batch * m * din), &[batch, m, din]);
    let w = t(rng.normal_vec(din * dout), &[din, dout]);
    let b = t(rng.normal_vec(dout), &[dout]);
    let g = t(rng.normal_vec(batch * m * dout), &[batch, m, dout]);
    let inputs = GraphConvInputs {
        adjacency: &a,
        x: &x,
        weight: &w,
        bias: Some(&b),
    };
    let bits = |t: &Tensor| -> Vec<u64> { values(t).iter().map(|v| v.to_bits()).collect() };
    let run = || {
        let fwd = graph_conv(&inputs).unwrap();
        let grads = graph_conv_backward(&inputs, &fwd.saved, &g, true).unwrap();
        [
            bits(&fwd.output),
            bits(&grads.x),
            bits(&grads.weight),
            bits(&grads.bias.unwrap()),
            bits(&grads.adjacency.unwrap()),
        ]
    };
    let first = run();
    for _ in 0..2 {
        assert!(first == run(), "graph conv results differ between runs");
    }
}

#[test]
fn cuda_rejects_bad_graphs_and_handles_empty_ones() {
    let Some(gpu) = detkd::cuda::gpu_for_test("graph_conv::cuda_rejects_bad_graphs") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let t = |v: &[f64], s: &[usize]| host(v, s, DType::F32).to_device(&gpu).unwrap();
    // Zero degree in batch entry 1, row 2 (exact in f32).
    let mut v = vec![0.1; 2 * 3 * 3];
    v[9 + 6..9 + 9].copy_from_slice(&[-0.5, -0.25, -0.25]);
    let e = normalized_adjacency(&t(&v, &[2, 3, 3]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch 1, row 2") && e.contains("> 0"), "{e}");
    for bad in [f64::NAN, f64::INFINITY] {
        let mut v = vec![0.1; 16];
        v[6] = bad;
        let e = normalized_adjacency(&t(&v, &[4, 4]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("finite") && e.contains("row 1"), "{e}");
    }
    // Mixed devices.
    let a = t(&[0.1; 9], &[3, 3]);
    let x_cpu = host(&[1.0; 6], &[3, 2], DType::F32);
    let w = t(&[1.0; 4], &[2, 2]);
    let e = graph_conv(&GraphConvInputs {
        adjacency: &a,
        x: &x_cpu,
        weight: &w,
        bias: None,
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("`x`") && e.contains("cpu"), "{e}");
    // Empty graph.
    let (a0, x0) = (t(&[], &[0, 0]), t(&[], &[0, 2]));
    let inputs = GraphConvInputs {
        adjacency: &a0,
        x: &x0,
        weight: &w,
        bias: None,
    };
    let fwd = graph_conv(&inputs).unwrap();
    assert_eq!(fwd.output.shape(), &[0, 2]);
    let grads = graph_conv_backward(&inputs, &fwd.saved, &t(&[], &[0, 2]), true).unwrap();
    assert_eq!(values(&grads.weight), vec![0.0; 4]);
}

#[test]
fn cuda_matches_pytorch_fixtures() {
    let Some(gpu) = detkd::cuda::gpu_for_test("graph_conv::cuda_matches_pytorch_fixtures") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F32, &gpu, 1e-5);
    }
}

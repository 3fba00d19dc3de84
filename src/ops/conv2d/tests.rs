//! Gradchecks, a direct (seven-loop) convolution as the oracle, chunking, validation and empty batches on
//! the CPU. PyTorch fixtures and CUDA parity live in tests/conv2d.rs.

use super::*;
use crate::autograd::{gradcheck, GradcheckOptions};
use crate::testing::{assert_close, Rng};

fn tensor(data: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

fn random(seed: u64, shape: &[usize]) -> Vec<f64> {
    Rng::new(seed).normal_vec(shape.iter().product())
}

fn cfg(stride: (usize, usize), padding: (usize, usize), dilation: (usize, usize)) -> Conv2dConfig {
    Conv2dConfig {
        stride,
        padding,
        dilation,
        ..Conv2dConfig::default()
    }
}

/// The definition, term by term: forward, and the adjoint (dx, dw, db) given dy.
struct Direct {
    x: Vec<f64>,
    w: Vec<f64>,
    b: Option<Vec<f64>>,
    xs: [usize; 4],
    ws: [usize; 4],
    c: Conv2dConfig,
}

impl Direct {
    fn out_hw(&self) -> (usize, usize) {
        conv2d_output_size((self.xs[2], self.xs[3]), (self.ws[2], self.ws[3]), &self.c).unwrap()
    }

    /// Calls `f(output index, weight index, input index)` for every tap that lands inside the image.
    fn taps(&self, mut f: impl FnMut(usize, usize, usize)) {
        let [nb, cin, h, w] = self.xs;
        let [cout, _, kh, kw] = self.ws;
        let (oh, ow) = self.out_hw();
        for b in 0..nb {
            for o in 0..cout {
                for u in 0..oh {
                    for v in 0..ow {
                        let out = ((b * cout + o) * oh + u) * ow + v;
                        for c in 0..cin {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let y = (u * self.c.stride.0 + i * self.c.dilation.0) as isize
                                        - self.c.padding.0 as isize;
                                    let x = (v * self.c.stride.1 + j * self.c.dilation.1) as isize
                                        - self.c.padding.1 as isize;
                                    if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                                        continue;
                                    }
                                    let wi = ((o * cin + c) * kh + i) * kw + j;
                                    let xi = ((b * cin + c) * h + y as usize) * w + x as usize;
                                    f(out, wi, xi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn forward(&self) -> Vec<f64> {
        let (oh, ow) = self.out_hw();
        let mut y = vec![0.0; self.xs[0] * self.ws[0] * oh * ow];
        let plane = oh * ow;
        if let Some(b) = &self.b {
            for (k, v) in y.iter_mut().enumerate() {
                *v = b[(k / plane) % self.ws[0]];
            }
        }
        self.taps(|out, wi, xi| y[out] += self.w[wi] * self.x[xi]);
        y
    }

    fn backward(&self, dy: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut dx, mut dw) = (vec![0.0; self.x.len()], vec![0.0; self.w.len()]);
        let mut db = vec![0.0; self.ws[0]];
        let (oh, ow) = self.out_hw();
        for (k, g) in dy.iter().enumerate() {
            db[(k / (oh * ow)) % self.ws[0]] += g;
        }
        self.taps(|out, wi, xi| {
            dx[xi] += self.w[wi] * dy[out];
            dw[wi] += self.x[xi] * dy[out];
        });
        (dx, dw, db)
    }
}

/// Configurations covering stride 2, padding, dilation 2, non-square everything, and both 1×1 cases.
fn cases() -> Vec<([usize; 4], [usize; 4], Conv2dConfig, bool)> {
    vec![
        (
            [2, 3, 7, 6],
            [4, 3, 3, 3],
            cfg((1, 1), (1, 1), (1, 1)),
            true,
        ),
        (
            [2, 3, 9, 8],
            [5, 3, 3, 3],
            cfg((2, 2), (1, 1), (1, 1)),
            true,
        ),
        (
            [1, 2, 9, 10],
            [3, 2, 3, 3],
            cfg((1, 1), (2, 2), (2, 2)),
            false,
        ),
        (
            [2, 3, 8, 11],
            [2, 3, 3, 2],
            cfg((2, 1), (1, 0), (1, 2)),
            true,
        ),
        ([3, 4, 5, 6], [6, 4, 1, 1], Conv2dConfig::default(), true),
        (
            [2, 4, 7, 5],
            [3, 4, 1, 1],
            cfg((2, 2), (0, 0), (1, 1)),
            false,
        ),
        (
            [1, 2, 5, 5],
            [2, 2, 1, 1],
            cfg((1, 1), (1, 1), (1, 1)),
            true,
        ),
        (
            [2, 1, 4, 4],
            [2, 1, 4, 4],
            cfg((1, 1), (0, 0), (1, 1)),
            true,
        ),
        (
            [1, 2, 6, 7],
            [3, 2, 5, 3],
            cfg((3, 2), (2, 1), (1, 1)),
            true,
        ),
    ]
}

fn direct(seed: u64, xs: [usize; 4], ws: [usize; 4], c: Conv2dConfig, with_bias: bool) -> Direct {
    Direct {
        x: random(seed, &xs),
        w: random(seed + 1, &ws),
        b: with_bias.then(|| random(seed + 2, &[ws[0]])),
        xs,
        ws,
        c,
    }
}

#[test]
fn forward_and_backward_match_the_definition() {
    for (k, (xs, ws, c, with_bias)) in cases().into_iter().enumerate() {
        let d = direct(10 * k as u64, xs, ws, c, with_bias);
        let x = tensor(d.x.clone(), &xs);
        let w = tensor(d.w.clone(), &ws);
        let b = d.b.clone().map(|b| tensor(b, &[ws[0]]));
        let y = conv2d(&x, &w, b.as_ref(), &c).unwrap();
        let (oh, ow) = d.out_hw();
        assert_eq!(y.shape(), &[xs[0], ws[0], oh, ow], "case {k}");
        assert_close(&format!("forward {k}"), &values(&y), &d.forward(), 1e-13);

        let dy = random(10 * k as u64 + 5, y.shape());
        let grads = conv2d_backward(
            &x,
            &w,
            &tensor(dy.clone(), y.shape()),
            Conv2dGradsWanted::default(),
            &c,
        )
        .unwrap();
        let (dx, dw, db) = d.backward(&dy);
        assert_close(
            &format!("dx {k}"),
            &values(grads.input.as_ref().unwrap()),
            &dx,
            1e-13,
        );
        assert_close(&format!("dw {k}"), &values(&grads.weight), &dw, 1e-13);
        assert_close(
            &format!("db {k}"),
            &values(grads.bias.as_ref().unwrap()),
            &db,
            1e-13,
        );
        assert_eq!(grads.weight.shape(), &ws);
    }
}

#[test]
fn gradcheck_input_weight_and_bias() {
    // Small shapes: each gradcheck probes every input, weight and bias element.
    for (k, (xs, ws, c)) in [
        ([2, 2, 5, 4], [3, 2, 3, 3], cfg((1, 1), (1, 1), (1, 1))),
        ([1, 2, 7, 6], [2, 2, 3, 2], cfg((2, 1), (1, 0), (2, 1))),
        ([2, 3, 3, 4], [2, 3, 1, 1], Conv2dConfig::default()),
        ([1, 2, 5, 5], [2, 2, 1, 1], cfg((2, 2), (1, 0), (1, 1))),
    ]
    .into_iter()
    .enumerate()
    {
        let (nx, nw, nb) = (
            xs.iter().product::<usize>(),
            ws.iter().product::<usize>(),
            ws[0],
        );
        let split = |v: &[f64]| {
            (
                tensor(v[..nx].to_vec(), &xs),
                tensor(v[nx..nx + nw].to_vec(), &ws),
                tensor(v[nx + nw..].to_vec(), &[nb]),
            )
        };
        let forward = |v: &[f64]| {
            let (x, w, b) = split(v);
            Ok(values(&conv2d(&x, &w, Some(&b), &c)?))
        };
        let backward = |v: &[f64], g: &[f64]| {
            let (x, w, _) = split(v);
            let (oh, ow) = conv2d_output_size((xs[2], xs[3]), (ws[2], ws[3]), &c)?;
            let g = tensor(g.to_vec(), &[xs[0], ws[0], oh, ow]);
            let grads = conv2d_backward(&x, &w, &g, Conv2dGradsWanted::default(), &c)?;
            let mut flat = values(grads.input.as_ref().unwrap());
            flat.extend(values(&grads.weight));
            flat.extend(values(grads.bias.as_ref().unwrap()));
            Ok(flat)
        };
        let x = random(100 + k as u64, &[nx + nw + nb]);
        let report = gradcheck(forward, backward, &x, &GradcheckOptions::default())
            .unwrap_or_else(|e| panic!("case {k}: {e}"));
        assert!(report.nonzero_entries > 0);
    }
}

#[test]
fn chunked_batches_give_the_same_bits() {
    // A workspace of one byte forces one image per chunk; 6 KB gives chunks of 2 with a shorter last one.
    let mut rng = Rng::new(7);
    for (xs, ws, c) in [
        ([5, 3, 6, 7], [4, 3, 3, 3], cfg((1, 1), (1, 1), (1, 1))),
        ([5, 4, 6, 5], [3, 4, 1, 1], Conv2dConfig::default()),
    ] {
        for dtype in [DType::F64, DType::F32] {
            let x = tensor(rng.normal_vec(xs.iter().product()), &xs)
                .to_dtype(dtype)
                .unwrap();
            let w = tensor(rng.normal_vec(ws.iter().product()), &ws)
                .to_dtype(dtype)
                .unwrap();
            let b = tensor(rng.normal_vec(ws[0]), &[ws[0]])
                .to_dtype(dtype)
                .unwrap();
            let whole = conv2d(&x, &w, Some(&b), &c).unwrap();
            let dy = tensor(rng.normal_vec(whole.numel()), whole.shape())
                .to_dtype(dtype)
                .unwrap();
            let full = conv2d_backward(&x, &w, &dy, Conv2dGradsWanted::default(), &c).unwrap();
            for workspace in [1, 6_000] {
                let small = Conv2dConfig {
                    workspace_bytes: workspace,
                    ..c
                };
                let g = check(&x, &w, None, &small).unwrap();
                let images = g.chunk_images(dtype, workspace, true);
                assert!(
                    images < xs[0],
                    "{workspace} B must split the batch, got {images}"
                );
                let y = conv2d(&x, &w, Some(&b), &small).unwrap();
                assert_eq!(values(&y), values(&whole), "{dtype} {workspace}");
                let part =
                    conv2d_backward(&x, &w, &dy, Conv2dGradsWanted::default(), &small).unwrap();
                assert_eq!(
                    values(part.input.as_ref().unwrap()),
                    values(full.input.as_ref().unwrap())
                );
                assert_eq!(values(&part.weight), values(&full.weight));
                assert_eq!(
                    values(part.bias.as_ref().unwrap()),
                    values(full.bias.as_ref().unwrap())
                );
            }
        }
    }
}

#[test]
fn chunk_sizes_follow_the_workspace() {
    let g = Geometry {
        batch: 8,
        cin: 64,
        h: 80,
        w: 80,
        cout: 64,
        kh: 3,
        kw: 3,
        oh: 80,
        ow: 80,
        stride: (1, 1),
        padding: (1, 1),
        dilation: (1, 1),
    };
    // Forward scratch per image (f32): columns 576·6400 + product 64·6400 + weight 64·576 elements.
    let per_image = (576 * 6400 + 64 * 6400 + 64 * 576) * 4;
    assert_eq!(
        g.chunk_images(DType::F32, DEFAULT_WORKSPACE_BYTES, false),
        8
    );
    assert_eq!(g.chunk_images(DType::F32, 3 * per_image, false), 3);
    assert_eq!(g.chunk_images(DType::F32, 3 * per_image - 1, false), 2);
    assert_eq!(g.chunk_images(DType::F64, 3 * per_image, false), 1);
    assert_eq!(
        g.chunk_images(DType::F32, 0, true),
        1,
        "never below one image"
    );
    let huge = Geometry {
        batch: 100_000,
        cin: 1,
        h: 1,
        w: 1,
        oh: 1,
        ow: 1,
        kh: 1,
        kw: 1,
        cout: 1,
        ..g
    };
    assert_eq!(
        huge.chunk_images(DType::F32, usize::MAX, true),
        65_535,
        "the GEMM's batch limit"
    );
}

#[test]
fn wanted_flags_skip_gradients() {
    let (xs, ws) = ([2, 2, 5, 5], [3, 2, 3, 3]);
    let x = tensor(random(1, &xs), &xs);
    let w = tensor(random(2, &ws), &ws);
    let c = Conv2dConfig::square(1, 1, 1);
    let dy = tensor(random(3, &[2, 3, 5, 5]), &[2, 3, 5, 5]);
    let all = conv2d_backward(&x, &w, &dy, Conv2dGradsWanted::default(), &c).unwrap();
    let none = Conv2dGradsWanted {
        input: false,
        bias: false,
    };
    let some = conv2d_backward(&x, &w, &dy, none, &c).unwrap();
    assert!(some.input.is_none() && some.bias.is_none());
    assert_eq!(values(&some.weight), values(&all.weight));
}

#[test]
fn into_writes_the_same_result_and_checks_out() {
    let (xs, ws) = ([2, 3, 6, 6], [4, 3, 3, 3]);
    let x = tensor(random(4, &xs), &xs);
    let w = tensor(random(5, &ws), &ws);
    let c = Conv2dConfig::square(2, 1, 1);
    let want = conv2d(&x, &w, None, &c).unwrap();
    let mut out = tensor(vec![f64::NAN; want.numel()], want.shape());
    conv2d_into(&x, &w, None, &c, &mut out).unwrap();
    assert_eq!(values(&out), values(&want));
    let mut wrong = tensor(vec![0.0; 8], &[2, 4, 1, 1]);
    let e = conv2d_into(&x, &w, None, &c, &mut wrong)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`out`: expected shape [2, 4, 3, 3]"), "{e}");
    let mut wrong = Tensor::zeros(want.shape(), DType::F32, &Device::Cpu).unwrap();
    let e = conv2d_into(&x, &w, None, &c, &mut wrong)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`out`: expected dtype f64, got f32"), "{e}");
}

#[test]
fn half_storage_matches_f64_on_the_rounded_inputs() {
    let (xs, ws) = ([2, 3, 7, 6], [4, 3, 3, 3]);
    let c = Conv2dConfig::square(2, 1, 1);
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F16, 1e-2), (DType::BF16, 1e-2)] {
        let x = tensor(random(6, &xs), &xs).to_dtype(dtype).unwrap();
        let w = tensor(random(7, &ws), &ws).to_dtype(dtype).unwrap();
        let b = tensor(random(8, &[4]), &[4]).to_dtype(dtype).unwrap();
        let wide = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let y = conv2d(&x, &w, Some(&b), &c).unwrap();
        assert_eq!(y.dtype(), dtype);
        let want = conv2d(&wide(&x), &wide(&w), Some(&wide(&b)), &c).unwrap();
        assert_close(
            &format!("forward {dtype}"),
            &values(&y),
            &values(&want),
            tol,
        );
        let dy = tensor(random(9, y.shape()), y.shape())
            .to_dtype(dtype)
            .unwrap();
        let got = conv2d_backward(&x, &w, &dy, Conv2dGradsWanted::default(), &c).unwrap();
        let want = conv2d_backward(
            &wide(&x),
            &wide(&w),
            &wide(&dy),
            Conv2dGradsWanted::default(),
            &c,
        )
        .unwrap();
        for (what, g, r) in [
            ("dx", got.input.unwrap(), want.input.unwrap()),
            ("dw", got.weight, want.weight),
            ("db", got.bias.unwrap(), want.bias.unwrap()),
        ] {
            assert_eq!(g.dtype(), dtype);
            assert_close(&format!("{what} {dtype}"), &values(&g), &values(&r), tol);
        }
    }
}

#[test]
fn empty_batches_give_empty_results() {
    let x = tensor(vec![], &[0, 3, 5, 5]);
    let w = tensor(random(1, &[2, 3, 3, 3]), &[2, 3, 3, 3]);
    let b = tensor(vec![1.0, 2.0], &[2]);
    let c = Conv2dConfig::square(1, 1, 1);
    let y = conv2d(&x, &w, Some(&b), &c).unwrap();
    assert_eq!(y.shape(), &[0, 2, 5, 5]);
    let g = conv2d_backward(&x, &w, &y, Conv2dGradsWanted::default(), &c).unwrap();
    assert_eq!(g.input.unwrap().shape(), &[0, 3, 5, 5]);
    assert_eq!(values(&g.weight), vec![0.0; 54]);
    assert_eq!(values(&g.bias.unwrap()), vec![0.0; 2]);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let x = tensor(random(1, &[1, 3, 5, 5]), &[1, 3, 5, 5]);
    let w = tensor(random(2, &[2, 3, 3, 3]), &[2, 3, 3, 3]);
    let ok = Conv2dConfig::default();
    let err = |r: Result<Tensor>| r.unwrap_err().to_string();
    let cases: Vec<(String, &str)> = vec![
        (
            err(conv2d(&tensor(vec![0.0; 75], &[3, 5, 5]), &w, None, &ok)),
            "`input`: expected shape [B, Cin, H, W], got [3, 5, 5]",
        ),
        (
            err(conv2d(&x, &tensor(vec![0.0; 27], &[3, 3, 3]), None, &ok)),
            "`weight`: expected shape [Cout, Cin, KH, KW], got [3, 3, 3]",
        ),
        (
            err(conv2d(&x, &tensor(vec![0.0; 36], &[2, 2, 3, 3]), None, &ok)),
            "`weight`: expected shape [Cout, 3, KH, KW] (the input's 3 channels; only groups = 1",
        ),
        (
            err(conv2d(&x, &w, Some(&tensor(vec![0.0; 3], &[3])), &ok)),
            "`bias`: expected shape [2], got [3]",
        ),
        (
            err(conv2d(
                &x,
                &tensor(vec![0.0; 150], &[2, 3, 5, 5]),
                None,
                &Conv2dConfig::square(1, 0, 2),
            )),
            "`weight`: the kernel's height spans 9 (size 5, dilation 2), more than the padded input's 5",
        ),
        (
            err(conv2d(&x, &tensor(vec![0.0; 36], &[2, 3, 1, 6]), None, &ok)),
            "`weight`: the kernel's width spans 6",
        ),
        (err(conv2d(&x, &w, None, &Conv2dConfig::square(0, 0, 1))), "`stride`: the height stride must be ≥ 1"),
        (
            err(conv2d(&x, &w, None, &cfg((1, 0), (0, 0), (1, 1)))),
            "`stride`: the width stride must be ≥ 1",
        ),
        (
            err(conv2d(&x, &w, None, &Conv2dConfig::square(1, 0, 0))),
            "`dilation`: the height dilation must be ≥ 1",
        ),
        (
            err(conv2d(&tensor(vec![], &[1, 0, 5, 5]), &tensor(vec![], &[2, 0, 3, 3]), None, &ok)),
            "`input`: expected shape [B, Cin, H, W] with Cin > 0",
        ),
        (
            err(conv2d(&tensor(vec![], &[1, 3, 0, 5]), &w, None, &ok)),
            "with H > 0 (only the batch may be empty)",
        ),
        (
            err(conv2d(&x, &tensor(vec![], &[0, 3, 3, 3]), None, &ok)),
            "`weight`: expected shape [Cout, Cin, KH, KW] with Cout > 0",
        ),
        (
            err(conv2d(&x, &tensor(vec![], &[2, 3, 0, 3]), None, &ok)),
            "with KH > 0",
        ),
        (
            err(conv2d(&x, &w.to_dtype(DType::F32).unwrap(), None, &ok)),
            "`weight`: expected dtype f64, got f32",
        ),
        (
            err(conv2d(&x, &w, Some(&tensor(vec![0.0; 2], &[2]).to_dtype(DType::BF16).unwrap()), &ok)),
            "`bias`: expected dtype f64, got bf16",
        ),
        (
            err(conv2d(
                &Tensor::from_vec(vec![0i64; 75], &[1, 3, 5, 5]).unwrap(),
                &Tensor::from_vec(vec![0i64; 54], &[2, 3, 3, 3]).unwrap(),
                None,
                &ok,
            )),
            "`input`: expected dtype a float dtype",
        ),
        (
            err(conv2d(&x, &w, None, &Conv2dConfig { padding: (usize::MAX / 2, 0), ..ok })),
            "`padding`",
        ),
        (
            err(conv2d(&x, &w, None, &Conv2dConfig { padding: (1 << 31, 0), ..ok })),
            "exceeds 2^31 - 1",
        ),
        (
            conv2d_backward(&x, &w, &tensor(vec![0.0; 6], &[1, 2, 3, 1]), Conv2dGradsWanted::default(), &ok)
                .unwrap_err()
                .to_string(),
            "`grad_output`: expected shape [1, 2, 3, 3], got [1, 2, 3, 1]",
        ),
        (
            conv2d_backward(
                &x,
                &w,
                &tensor(vec![0.0; 18], &[1, 2, 3, 3]).to_dtype(DType::F32).unwrap(),
                Conv2dGradsWanted::default(),
                &ok,
            )
            .unwrap_err()
            .to_string(),
            "`grad_output`: expected dtype f64, got f32",
        ),
    ];
    for (message, expected) in cases {
        assert!(
            message.contains(expected),
            "`{message}` does not mention `{expected}`"
        );
    }
    // The size helper reports the same rule.
    assert!(conv2d_output_size((4, 4), (5, 1), &ok).is_err());
    assert_eq!(
        conv2d_output_size((4, 4), (5, 1), &Conv2dConfig::square(1, 1, 1)).unwrap(),
        (2, 6)
    );
}

#[test]
fn output_size_helper_rejects_empty_extents() {
    let c = Conv2dConfig::default();
    let e = conv2d_output_size((5, 5), (0, 3), &c)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`weight`: the kernel's height must be > 0"),
        "{e}"
    );
    let e = conv2d_output_size((5, 0), (3, 3), &Conv2dConfig::square(1, 2, 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`input`: the input's width must be > 0"), "{e}");
    assert_eq!(
        conv2d_output_size((80, 80), (3, 3), &Conv2dConfig::square(2, 1, 1)).unwrap(),
        (40, 40)
    );
}

//! Gradchecks, naive-reference checks, a model of the CUDA permute kernels' index arithmetic, validation
//! and empty inputs on the CPU. PyTorch fixtures and CUDA parity live in tests/shape.rs.

use super::plan::{
    strides, Collapsed, InverseIndex, PermuteLaunch, TiledPermuteArgs, TILE, TILE_ROWS,
};
use super::*;
use crate::autograd::{gradcheck, GradcheckOptions};
use crate::testing::Rng;

fn tensor(data: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

fn random(seed: u64, shape: &[usize]) -> Vec<f64> {
    Rng::new(seed).normal_vec(shape.iter().product())
}

fn indices(v: &[i64]) -> Tensor {
    Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap()
}

fn err_of<T: std::fmt::Debug>(r: Result<T>) -> String {
    r.unwrap_err().to_string()
}

#[track_caller]
fn assert_err<T: std::fmt::Debug>(r: Result<T>, needles: &[&str]) {
    let e = err_of(r);
    for n in needles {
        assert!(e.contains(n), "error `{e}` lacks `{n}`");
    }
}

fn check(
    what: &str,
    forward: impl Fn(&[f64]) -> Result<Vec<f64>>,
    backward: impl Fn(&[f64], &[f64]) -> Result<Vec<f64>>,
    x: &[f64],
) {
    let report = gradcheck(forward, backward, x, &GradcheckOptions::default())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        report.nonzero_entries > 0,
        "{what}: all-zero Jacobian proves nothing"
    );
}

/// `y[i] = x[j]` with `j_{perm[k]} = i_k`, element by element.
fn naive_permute(x: &[f64], shape: &[usize], perm: &[usize]) -> Vec<f64> {
    let out_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
    let in_strides = strides(shape);
    let n: usize = shape.iter().product();
    (0..n)
        .map(|i| {
            let (mut rest, mut offset) = (i, 0);
            for k in (0..perm.len()).rev() {
                offset += (rest % out_shape[k]) * in_strides[perm[k]];
                rest /= out_shape[k];
            }
            x[offset]
        })
        .collect()
}

fn random_perm(rng: &mut Rng, rank: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..rank).collect();
    for i in (1..rank).rev() {
        p.swap(i, rng.below(i + 1));
    }
    p
}

fn random_shape(rng: &mut Rng, rank: usize, max: usize) -> Vec<usize> {
    (0..rank).map(|_| 1 + rng.below(max)).collect()
}

/// Bit patterns of a host tensor's elements, for exact comparisons across dtypes.
fn bits(t: &Tensor) -> Vec<u64> {
    use crate::tensor::CpuStorage;
    match t.cpu_storage().unwrap() {
        CpuStorage::F32(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
        CpuStorage::F64(v) => v.iter().map(|x| x.to_bits()).collect(),
        CpuStorage::F16(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
        CpuStorage::BF16(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
        CpuStorage::I64(v) => v.iter().map(|&x| x as u64).collect(),
    }
}

const ALL_DTYPES: [DType; 5] = [DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64];

/// Distinct small integers, exact in every dtype (bf16 holds integers up to 256 exactly).
fn labels(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(255) as f64 - 127.0).collect()
}

// ---------------------------------------------------------------------------------------------------------
// Gradchecks (f64, PyTorch tolerances)

#[test]
fn gradcheck_permute_and_transpose() {
    let shape = [2, 3, 1, 4];
    let x = random(1, &shape);
    for perm in [[0, 2, 3, 1], [3, 1, 0, 2], [1, 0, 2, 3]] {
        let out_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
        check(
            &format!("permute {perm:?}"),
            |x| Ok(values(&permute(&tensor(x.to_vec(), &shape), &perm)?)),
            |_, g| {
                Ok(values(&permute_backward(
                    &tensor(g.to_vec(), &out_shape),
                    &perm,
                )?))
            },
            &x,
        );
    }
    let out_shape = [4, 3, 1, 2];
    check(
        "transpose 0 3",
        |x| Ok(values(&transpose(&tensor(x.to_vec(), &shape), 0, 3)?)),
        |_, g| {
            Ok(values(&transpose_backward(
                &tensor(g.to_vec(), &out_shape),
                0,
                3,
            )?))
        },
        &x,
    );
}

#[test]
fn gradcheck_narrow() {
    let shape = [3, 5, 2];
    let x = random(2, &shape);
    for (axis, start, len) in [(1, 1, 3), (0, 2, 1), (2, 0, 2), (1, 4, 1)] {
        let mut out_shape = shape.to_vec();
        out_shape[axis] = len;
        check(
            &format!("narrow axis {axis} [{start}, +{len})"),
            |x| {
                Ok(values(&narrow(
                    &tensor(x.to_vec(), &shape),
                    axis,
                    start,
                    len,
                )?))
            },
            |_, g| {
                Ok(values(&narrow_backward(
                    &tensor(g.to_vec(), &out_shape),
                    &shape,
                    axis,
                    start,
                )?))
            },
            &x,
        );
    }
}

#[test]
fn gradcheck_concat_and_split() {
    let shapes = [[2, 3, 2], [2, 1, 2], [2, 4, 2]];
    let sizes = [3, 1, 4];
    let x = random(3, &[2, 8, 2]);
    let parts = |v: &[f64]| -> Vec<Tensor> {
        let mut at = 0;
        shapes
            .iter()
            .map(|s| {
                let n: usize = s.iter().product();
                at += n;
                tensor(v[at - n..at].to_vec(), s)
            })
            .collect()
    };
    check(
        "concat axis 1",
        |v| {
            let p = parts(v);
            Ok(values(&concat(&p.iter().collect::<Vec<_>>(), 1)?))
        },
        |_, g| {
            let grads = concat_backward(&tensor(g.to_vec(), &[2, 8, 2]), 1, &sizes)?;
            Ok(grads.iter().flat_map(values).collect())
        },
        &x,
    );
    check(
        "split axis 1",
        |v| {
            let pieces = split(&tensor(v.to_vec(), &[2, 8, 2]), 1, &sizes)?;
            Ok(pieces.iter().flat_map(values).collect())
        },
        |_, g| {
            let p = parts(g);
            Ok(values(&split_backward(&p.iter().collect::<Vec<_>>(), 1)?))
        },
        &x,
    );
}

#[test]
fn gradcheck_index_select_with_duplicates() {
    let shape = [3, 5, 2];
    let x = random(4, &shape);
    // Duplicates, and rows nobody selects (axis 0: row 1; axis 1: rows 2 and 4).
    for (axis, list) in [(0usize, vec![2i64, 0, 2, 2]), (1, vec![3, 0, 3, 1, 3, 0])] {
        let list = indices(&list);
        let mut out_shape = shape.to_vec();
        out_shape[axis] = list.numel();
        check(
            &format!("index_select axis {axis}"),
            |x| {
                Ok(values(&index_select(
                    &tensor(x.to_vec(), &shape),
                    axis,
                    &list,
                )?))
            },
            |_, g| {
                Ok(values(&index_select_backward(
                    &tensor(g.to_vec(), &out_shape),
                    &shape,
                    axis,
                    &list,
                )?))
            },
            &x,
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Results against naive references, every dtype, bit for bit

#[test]
fn permute_matches_naive_reference_in_every_dtype() {
    let mut rng = Rng::new(10);
    for case in 0..60 {
        let rank = case % 7;
        let shape = random_shape(&mut rng, rank, 4);
        let perm = random_perm(&mut rng, rank);
        let n: usize = shape.iter().product();
        let x = labels(n, case as u64);
        let want = naive_permute(&x, &shape, &perm);
        for dtype in ALL_DTYPES {
            let xt = tensor(x.clone(), &shape).to_dtype(dtype).unwrap();
            let got = permute(&xt, &perm).unwrap();
            let expected: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
            assert_eq!(got.shape(), expected.as_slice());
            assert_eq!(got.dtype(), dtype);
            assert_eq!(
                values(&got),
                want,
                "case {case} {dtype} shape {shape:?} perm {perm:?}"
            );
        }
    }
}

#[test]
fn data_movement_keeps_bit_patterns() {
    // NaN payloads, signed zeros, infinities and subnormals come through untouched.
    let specials = [
        f32::from_bits(0x7fc0_1234),
        -0.0,
        f32::INFINITY,
        f32::from_bits(1),
        -1.5,
        0.0,
    ];
    let x = Tensor::from_vec(specials.to_vec(), &[2, 3]).unwrap();
    let idx = indices(&[1, 0, 1]);
    let outs = [
        permute(&x, &[1, 0]).unwrap(),
        narrow(&x, 1, 0, 3).unwrap(),
        concat(&[&x, &x], 0).unwrap(),
        index_select(&x, 0, &idx).unwrap(),
    ];
    let src: Vec<u32> = specials.iter().map(|v| v.to_bits()).collect();
    let got: Vec<Vec<u32>> = outs
        .iter()
        .map(|t| {
            t.as_slice::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect();
    assert_eq!(got[0], [src[0], src[3], src[1], src[4], src[2], src[5]]);
    assert_eq!(got[1], src);
    assert_eq!(got[2], [src.clone(), src.clone()].concat());
    assert_eq!(got[3], [&src[3..], &src[..3], &src[3..]].concat());
}

#[test]
fn narrow_concat_split_match_naive_references() {
    let mut rng = Rng::new(11);
    for case in 0..40 {
        let rank = 1 + case % 4;
        let shape = random_shape(&mut rng, rank, 5);
        let axis = rng.below(rank);
        let extent = shape[axis];
        let start = rng.below(extent + 1);
        let len = rng.below(extent - start + 1);
        let n: usize = shape.iter().product();
        let x = labels(n, 100 + case as u64);
        let (outer, _, inner) = around_axis(&shape, axis);
        // narrow: y[o, i, c] = x[o, start + i, c]
        let want: Vec<f64> = (0..outer)
            .flat_map(|o| (0..len).flat_map(move |i| (0..inner).map(move |c| (o, i, c))))
            .map(|(o, i, c)| x[(o * extent + start + i) * inner + c])
            .collect();
        // split in three pieces, and concat of the pieces gives x back.
        let sizes = [start, len, extent - start - len];
        for dtype in ALL_DTYPES {
            let xt = tensor(x.clone(), &shape).to_dtype(dtype).unwrap();
            let what = format!("case {case} {dtype} shape {shape:?} axis {axis} [{start}, +{len})");
            let got = narrow(&xt, axis, start, len).unwrap();
            assert_eq!(values(&got), want, "narrow {what}");
            let pieces = split(&xt, axis, &sizes).unwrap();
            assert_eq!(bits(&pieces[1]), bits(&got), "split {what}");
            let joined = concat(&pieces.iter().collect::<Vec<_>>(), axis).unwrap();
            assert_eq!(joined.shape(), shape.as_slice());
            assert_eq!(bits(&joined), bits(&xt), "concat {what}");
        }
        // narrow's backward puts the slice back among zeros.
        let g = tensor(
            want.clone(),
            narrow(&tensor(x.clone(), &shape), axis, start, len)
                .unwrap()
                .shape(),
        );
        let dx = values(&narrow_backward(&g, &shape, axis, start).unwrap());
        for o in 0..outer {
            for d in 0..extent {
                for c in 0..inner {
                    let i = (o * extent + d) * inner + c;
                    let expected = if (start..start + len).contains(&d) {
                        x[i]
                    } else {
                        0.0
                    };
                    assert_eq!(dx[i], expected, "narrow_backward case {case}");
                }
            }
        }
    }
}

#[test]
fn index_select_matches_naive_reference() {
    let mut rng = Rng::new(12);
    for case in 0..40 {
        let rank = 1 + case % 4;
        let shape = random_shape(&mut rng, rank, 5);
        let axis = rng.below(rank);
        let extent = shape[axis];
        let m = rng.below(7);
        let idx: Vec<i64> = (0..m).map(|_| rng.below(extent) as i64).collect();
        let x = labels(shape.iter().product(), 200 + case as u64);
        let (outer, _, inner) = around_axis(&shape, axis);
        let want: Vec<f64> = (0..outer)
            .flat_map(|o| (0..m).flat_map(move |j| (0..inner).map(move |c| (o, j, c))))
            .map(|(o, j, c)| x[(o * extent + idx[j] as usize) * inner + c])
            .collect();
        for dtype in ALL_DTYPES {
            let xt = tensor(x.clone(), &shape).to_dtype(dtype).unwrap();
            let got = index_select(&xt, axis, &indices(&idx)).unwrap();
            assert_eq!(got.shape()[axis], m);
            assert_eq!(
                values(&got),
                want,
                "case {case} {dtype} shape {shape:?} axis {axis} idx {idx:?}"
            );
        }
        // Backward: Σ over the positions that picked each row.
        let g = random(300 + case as u64, &[outer * m * inner]);
        let mut gshape = shape.clone();
        gshape[axis] = m;
        let dx = values(
            &index_select_backward(&tensor(g.clone(), &gshape), &shape, axis, &indices(&idx))
                .unwrap(),
        );
        let mut want = vec![0.0; x.len()];
        for o in 0..outer {
            for (j, &d) in idx.iter().enumerate() {
                for c in 0..inner {
                    want[(o * extent + d as usize) * inner + c] += g[(o * m + j) * inner + c];
                }
            }
        }
        assert_eq!(dx, want, "backward case {case}");
    }
}

#[test]
fn index_select_backward_sums_in_f32_in_ascending_order_then_rounds_once() {
    // 1 plus three steps of 0.4 ulp(1), all landing on row 1: a running sum in the storage dtype would
    // round every step back to 1; the f32 sum rounded once (what both devices compute) moves up one ulp.
    for (dtype, step) in [(DType::F16, 4e-4), (DType::BF16, 3e-3)] {
        let gt = tensor(vec![1.0, step, step, step], &[4, 1])
            .to_dtype(dtype)
            .unwrap();
        let dx = index_select_backward(&gt, &[3, 1], 0, &indices(&[1, 1, 1, 1])).unwrap();
        assert_eq!(dx.dtype(), dtype);
        let sum = values(&gt).iter().fold(0.0f32, |acc, &v| acc + v as f32);
        let want = tensor(vec![0.0, sum as f64, 0.0], &[3, 1])
            .to_dtype(dtype)
            .unwrap();
        assert_eq!(bits(&dx), bits(&want), "{dtype}");
        assert!(values(&dx)[1] > 1.0, "{dtype}: {:?}", values(&dx));
    }
    // Rows nobody points to are exact +0.0.
    let dx = index_select_backward(
        &tensor(vec![-0.0, -0.0], &[2, 1]),
        &[3, 1],
        0,
        &indices(&[2, 2]),
    )
    .unwrap();
    assert_eq!(bits(&dx), vec![0, 0, 0]);
}

#[test]
fn inverse_index_lists_sources_in_ascending_order() {
    let inv = InverseIndex::new(&[2, 0, 2, 4, 2, 0], 5);
    assert_eq!(inv.offsets, vec![0, 2, 2, 5, 5, 6]);
    assert_eq!(inv.sources_of(0), &[1, 5]);
    assert_eq!(inv.sources_of(1), &[] as &[i64]);
    assert_eq!(inv.sources_of(2), &[0, 2, 4]);
    assert_eq!(inv.sources_of(4), &[3]);
    let empty = InverseIndex::new(&[], 3);
    assert_eq!((empty.offsets, empty.sources), (vec![0, 0, 0, 0], vec![]));
}

// ---------------------------------------------------------------------------------------------------------
// Permutation collapse and a model of the CUDA kernels' index arithmetic

#[test]
fn collapse_drops_unit_axes_and_merges_runs() {
    let c = Collapsed::new(&[8, 256, 100, 168], &[0, 2, 3, 1]);
    assert_eq!(
        (c.dims.clone(), c.perm.clone()),
        (vec![8, 256, 16800], vec![0, 2, 1])
    );
    let c = Collapsed::new(&[2, 1, 3, 4], &[1, 0, 2, 3]);
    assert_eq!((c.dims.clone(), c.perm.clone()), (vec![24], vec![0]));
    assert!(c.is_identity());
    let c = Collapsed::new(&[1, 1], &[1, 0]);
    assert_eq!((c.dims.len(), c.is_identity()), (0, true));
    let c = Collapsed::new(&[2, 3, 4, 5], &[3, 2, 0, 1]);
    assert_eq!(
        (c.dims.clone(), c.perm.clone()),
        (vec![6, 4, 5], vec![2, 1, 0])
    );
    // The collapsed form moves data exactly like the original.
    let mut rng = Rng::new(13);
    for _ in 0..200 {
        let rank = rng.below(7);
        let shape = random_shape(&mut rng, rank, 3);
        let perm = random_perm(&mut rng, rank);
        let x = labels(shape.iter().product(), 1);
        let c = Collapsed::new(&shape, &perm);
        let want = naive_permute(&x, &shape, &perm);
        let got = if c.rank() == 0 {
            x.clone()
        } else {
            naive_permute(&x, &c.dims, &c.perm)
        };
        assert_eq!(got, want, "shape {shape:?} perm {perm:?} → {c:?}");
    }
}

/// Replays `permute_tiled_*` (kernels/shape.cu) thread by thread on a small grid (so both grid-stride
/// loops turn over), checking every access is in bounds and every output element is written once.
#[allow(clippy::needless_range_loop)] // the loops mirror the kernel's thread indices
fn model_tiled(src: &[f64], a: &TiledPermuteArgs, grid: (usize, usize)) -> Vec<f64> {
    let n = src.len();
    let mut dst = vec![f64::NAN; n];
    let mut writes = vec![0u32; n];
    let (ae, be) = (a.a_extent as usize, a.b_extent as usize);
    let tiles_a = ae.div_ceil(TILE);
    let tiles = tiles_a * be.div_ceil(TILE);
    for by in 0..grid.1 {
        for bt in (by..a.batch as usize).step_by(grid.1) {
            let (mut rest, mut in_base, mut out_base) = (bt, 0usize, 0usize);
            for k in (0..a.batch_rank as usize).rev() {
                let coord = rest % a.batch_dims[k] as usize;
                rest /= a.batch_dims[k] as usize;
                in_base += coord * a.batch_in_strides[k] as usize;
                out_base += coord * a.batch_out_strides[k] as usize;
            }
            for bx in 0..grid.0 {
                for t in (bx..tiles).step_by(grid.0) {
                    let (a0, b0) = ((t % tiles_a) * TILE, (t / tiles_a) * TILE);
                    let mut tile = [[f64::NAN; TILE + 1]; TILE];
                    for ty in 0..TILE_ROWS {
                        for tx in 0..TILE {
                            for j in (ty..TILE).step_by(TILE_ROWS) {
                                let (av, bv) = (a0 + tx, b0 + j);
                                if av < ae && bv < be {
                                    let at = in_base + bv * a.b_in_stride as usize + av;
                                    assert!(at < n, "read past the input");
                                    tile[j][tx] = src[at];
                                }
                            }
                        }
                    }
                    for ty in 0..TILE_ROWS {
                        for tx in 0..TILE {
                            for j in (ty..TILE).step_by(TILE_ROWS) {
                                let (av, bv) = (a0 + j, b0 + tx);
                                if av < ae && bv < be {
                                    let at = out_base + av * a.a_out_stride as usize + bv;
                                    assert!(at < n, "write past the output");
                                    dst[at] = tile[tx][j];
                                    writes[at] += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        writes.iter().all(|&w| w == 1),
        "every output element written exactly once"
    );
    dst
}

#[test]
fn cuda_permute_kernel_arguments_reproduce_the_permutation() {
    let mut rng = Rng::new(14);
    let (mut tiled, mut generic, mut copies) = (0, 0, 0);
    for case in 0..150 {
        let rank = case % 7;
        let max = [40, 40, 40, 12, 7, 5, 4][rank];
        let shape = random_shape(&mut rng, rank, max);
        let perm = random_perm(&mut rng, rank);
        let x = labels(shape.iter().product(), case as u64);
        let want = naive_permute(&x, &shape, &perm);
        let got = match PermuteLaunch::new(&Collapsed::new(&shape, &perm)) {
            PermuteLaunch::Copy { numel } => {
                copies += 1;
                assert_eq!(numel, x.len());
                x.clone()
            }
            PermuteLaunch::Generic(a) => {
                generic += 1;
                assert_eq!(a.numel as usize, x.len());
                // permute_generic_*: decompose i over out_dims[..rank], innermost first.
                (0..x.len())
                    .map(|i| {
                        let (mut rest, mut offset) = (i as u64, 0i64);
                        for k in (0..a.rank as usize).rev() {
                            let extent = a.out_dims[k] as u64;
                            offset += (rest % extent) as i64 * a.in_strides[k];
                            rest /= extent;
                        }
                        x[offset as usize]
                    })
                    .collect()
            }
            PermuteLaunch::Tiled(a) => {
                tiled += 1;
                let grid = (1 + rng.below(3), 1 + rng.below(3));
                model_tiled(&x, &a, grid)
            }
        };
        assert_eq!(got, want, "case {case} shape {shape:?} perm {perm:?}");
    }
    assert!(
        tiled > 10 && generic > 10 && copies > 5,
        "{tiled} tiled, {generic} generic, {copies} copies"
    );
    // The benchmark layout change goes through the tiled kernel.
    let launch = PermuteLaunch::new(&Collapsed::new(&[8, 256, 100, 168], &[0, 2, 3, 1]));
    assert!(
        matches!(launch, PermuteLaunch::Tiled(a) if a.batch == 8 && a.a_extent == 16800 && a.b_extent == 256)
    );
}

// ---------------------------------------------------------------------------------------------------------
// Validation: every rule, with messages naming the argument, the expectation and the value

#[test]
fn permute_rejects_bad_permutations_and_ranks() {
    let x = tensor(random(20, &[2, 3, 4]), &[2, 3, 4]);
    assert_err(
        permute(&x, &[0, 1]),
        &["`perm`", "3 axes", "[0, 1] with 2 entries"],
    );
    assert_err(
        permute(&x, &[0, 3, 1]),
        &["`perm`", "entry 1 is 3, not an axis"],
    );
    assert_err(
        permute(&x, &[0, 2, 0]),
        &["`perm`", "axis 0 appears twice (entries 0 and 2)"],
    );
    assert_err(inverse_permutation(&[1, 1]), &["axis 1 appears twice"]);
    assert_eq!(inverse_permutation(&[2, 0, 1]).unwrap(), vec![1, 2, 0]);
    let big = Tensor::zeros(&[1; 7], DType::F32, &Device::Cpu).unwrap();
    assert_err(
        permute(&big, &[0, 1, 2, 3, 4, 5, 6]),
        &["`x`", "rank at most 6", "[1, 1, 1, 1, 1, 1, 1]"],
    );
    assert_err(transpose(&big, 0, 1), &["`x`", "rank at most 6"]);
    assert_err(transpose(&x, 0, 3), &["`b`", "in [0, 3), got 3"]);
    assert_err(transpose(&x, 5, 0), &["`a`", "got 5"]);
    let g = Tensor::zeros(&[3, 2, 4], DType::I64, &Device::Cpu).unwrap();
    assert_err(
        permute_backward(&g, &[1, 0, 2]),
        &["`grad_out`", "float", "i64"],
    );
    let mut out = Tensor::zeros(&[2, 3, 4], DType::F64, &Device::Cpu).unwrap();
    assert_err(
        permute_into(&x, &[1, 0, 2], &mut out),
        &["`out`", "[3, 2, 4]", "[2, 3, 4]"],
    );
    let mut out = Tensor::zeros(&[3, 2, 4], DType::F32, &Device::Cpu).unwrap();
    assert_err(
        permute_into(&x, &[1, 0, 2], &mut out),
        &["`out`", "expected f64 on cpu, got f32 on cpu"],
    );
    // Rank 6 is accepted, and a scalar permutes to itself.
    let six = tensor(random(21, &[2, 1, 2, 1, 2, 3]), &[2, 1, 2, 1, 2, 3]);
    assert_eq!(
        permute(&six, &[5, 4, 3, 2, 1, 0]).unwrap().shape(),
        &[3, 2, 1, 2, 1, 2]
    );
    let scalar = tensor(vec![4.5], &[]);
    assert_eq!(values(&permute(&scalar, &[]).unwrap()), vec![4.5]);
}

#[test]
fn narrow_rejects_bad_axes_and_slices() {
    let x = tensor(random(22, &[2, 5]), &[2, 5]);
    assert_err(
        narrow(&x, 2, 0, 1),
        &["`axis`", "shape [2, 5]", "in [0, 2), got 2"],
    );
    assert_err(
        narrow(&x, 1, 6, 0),
        &["`start`", "6 is past the end of axis 1", "extent 5"],
    );
    assert_err(
        narrow(&x, 1, 3, 3),
        &["`len`", "[3, 3 + 3)", "axis 1", "extent 5"],
    );
    assert_err(narrow(&x, 1, usize::MAX, 2), &["`start`"]);
    assert_err(narrow(&x, 1, 2, usize::MAX), &["`len`"]);
    let scalar = tensor(vec![1.0], &[]);
    assert_err(narrow(&scalar, 0, 0, 1), &["`axis`", "scalar"]);
    // Zero-length slices, at the end too, are empty results.
    assert_eq!(narrow(&x, 1, 5, 0).unwrap().shape(), &[2, 0]);
    assert_eq!(narrow(&x, 0, 1, 0).unwrap().shape(), &[0, 5]);

    let g = tensor(random(23, &[2, 2]), &[2, 2]);
    assert_err(
        narrow_backward(&g, &[2, 5], 1, 4),
        &["`len`", "[4, 4 + 2)", "`input_shape`"],
    );
    assert_err(
        narrow_backward(&g, &[2, 5], 2, 0),
        &["`axis`", "`input_shape`"],
    );
    assert_err(
        narrow_backward(&g, &[3, 5], 1, 0),
        &["`grad_out`", "[3, 2]", "[2, 2]"],
    );
    assert_err(
        narrow_backward(&g, &[2, 5, 1], 1, 0),
        &["`grad_out`", "rank 3"],
    );
    let gi = Tensor::zeros(&[2, 2], DType::I64, &Device::Cpu).unwrap();
    assert_err(narrow_backward(&gi, &[2, 5], 1, 0), &["`grad_out`", "i64"]);
    let mut out = Tensor::zeros(&[2, 5], DType::F32, &Device::Cpu).unwrap();
    assert_err(
        narrow_backward_into(&g, 1, 0, &mut out),
        &["`out`", "expected f64"],
    );
    // An empty slice's gradient is all zeros.
    let empty = Tensor::zeros(&[2, 0], DType::F64, &Device::Cpu).unwrap();
    assert_eq!(
        values(&narrow_backward(&empty, &[2, 5], 1, 5).unwrap()),
        vec![0.0; 10]
    );
}

#[test]
fn concat_and_split_reject_disagreeing_parts() {
    let a = tensor(random(24, &[2, 3, 4]), &[2, 3, 4]);
    let b = tensor(random(25, &[2, 1, 4]), &[2, 1, 4]);
    let c = tensor(random(26, &[2, 2, 5]), &[2, 2, 5]);
    assert_err(concat(&[], 0), &["`parts`", "at least one tensor"]);
    assert_err(
        concat(&[&a, &b, &c], 1),
        &[
            "`parts[2]`",
            "extent 4 on axis 2",
            "concat axis 1",
            "[2, 2, 5]",
        ],
    );
    assert_err(
        concat(&[&a, &b], 0),
        &["`parts[1]`", "extent 3 on axis 1", "concat axis 0"],
    );
    let flat = tensor(random(27, &[8]), &[8]);
    assert_err(concat(&[&a, &flat], 0), &["`parts[1]`", "rank 3", "[8]"]);
    assert_err(concat(&[&a, &b], 3), &["`axis`", "`parts[0]`", "got 3"]);
    let b32 = b.to_dtype(DType::F32).unwrap();
    assert_err(
        concat(&[&a, &b32], 1),
        &["`parts[1]`", "expected dtype f64, got f32"],
    );
    let mut out = Tensor::zeros(&[2, 3, 4], DType::F64, &Device::Cpu).unwrap();
    assert_err(concat_into(&[&a, &b], 1, &mut out), &["`out`", "[2, 4, 4]"]);
    assert_eq!(concat(&[&a, &b], 1).unwrap().shape(), &[2, 4, 4]);

    assert_err(
        split(&a, 1, &[1, 1]),
        &["`sizes`", "summing to 3", "[1, 1]"],
    );
    assert_err(split(&a, 1, &[usize::MAX, 4]), &["`sizes`"]);
    assert_err(split(&a, 3, &[1]), &["`axis`", "got 3"]);
    let gi = Tensor::zeros(&[2, 3], DType::I64, &Device::Cpu).unwrap();
    assert_err(concat_backward(&gi, 1, &[3]), &["`grad_out`", "i64"]);
    assert_err(split_backward(&[&a, &gi], 1), &["`grads[1]`", "i64"]);
    // Empty parts and empty pieces.
    let none = Tensor::zeros(&[2, 0, 4], DType::F64, &Device::Cpu).unwrap();
    assert_eq!(bits(&concat(&[&none, &a, &none], 1).unwrap()), bits(&a));
    let pieces = split(&a, 1, &[0, 3, 0]).unwrap();
    assert_eq!(
        pieces.iter().map(|p| p.shape()[1]).collect::<Vec<_>>(),
        vec![0, 3, 0]
    );
    assert_eq!(split(&none, 1, &[]).unwrap().len(), 0);
    let all_empty = concat(&[&none, &none], 1).unwrap();
    assert_eq!(all_empty.shape(), &[2, 0, 4]);
}

#[test]
fn index_select_rejects_bad_indices() {
    let x = tensor(random(28, &[4, 3]), &[4, 3]);
    assert_err(
        index_select(&x, 0, &indices(&[0, 3, 4, -1])),
        &[
            "`indices`",
            "entry 2 is 4, outside [0, 4)",
            "axis 0",
            "past the end",
        ],
    );
    assert_err(
        index_select(&x, 1, &indices(&[2, -1, 7])),
        &["`indices`", "entry 1 is -1", "negative"],
    );
    assert_err(index_select(&x, 2, &indices(&[0])), &["`axis`", "got 2"]);
    let float_idx = tensor(vec![0.0, 1.0], &[2]);
    assert_err(
        index_select(&x, 0, &float_idx),
        &["`indices`", "expected dtype i64, got f64"],
    );
    let matrix_idx = Tensor::from_vec(vec![0i64, 1], &[1, 2]).unwrap();
    assert_err(
        index_select(&x, 0, &matrix_idx),
        &["`indices`", "[M]", "[1, 2]"],
    );
    let mut out = Tensor::zeros(&[3, 3], DType::F64, &Device::Cpu).unwrap();
    assert_err(
        index_select_into(&x, 0, &indices(&[0, 1]), &mut out),
        &["`out`", "[2, 3]", "[3, 3]"],
    );

    let g = tensor(random(29, &[2, 3]), &[2, 3]);
    assert_err(
        index_select_backward(&g, &[4, 3], 0, &indices(&[0, 9])),
        &["`indices`", "entry 1 is 9", "`input_shape`"],
    );
    assert_err(
        index_select_backward(&g, &[4, 3], 0, &indices(&[0, 1, 2])),
        &["`grad_out`", "[3, 3]", "[2, 3]"],
    );
    assert_err(
        index_select_backward(&g, &[4, 3], 2, &indices(&[0, 1])),
        &["`axis`", "`input_shape`"],
    );
    let gi = Tensor::zeros(&[2, 3], DType::I64, &Device::Cpu).unwrap();
    assert_err(
        index_select_backward(&gi, &[4, 3], 0, &indices(&[0, 1])),
        &["`grad_out`", "i64"],
    );
    let mut out = Tensor::zeros(&[4, 3], DType::F32, &Device::Cpu).unwrap();
    assert_err(
        index_select_backward_into(&g, 0, &indices(&[0, 1]), &mut out),
        &["`out`", "expected f64"],
    );
    // Duplicates are fine; an empty list selects nothing and its gradient is zero.
    assert_eq!(
        index_select(&x, 0, &indices(&[1, 1, 1])).unwrap().shape(),
        &[3, 3]
    );
    let none = indices(&[]);
    assert_eq!(index_select(&x, 1, &none).unwrap().shape(), &[4, 0]);
    let g0 = Tensor::zeros(&[4, 0], DType::F64, &Device::Cpu).unwrap();
    assert_eq!(
        values(&index_select_backward(&g0, &[4, 3], 1, &none).unwrap()),
        vec![0.0; 12]
    );
    let mut out = tensor(vec![f64::NAN; 12], &[4, 3]);
    index_select_backward_into(&g0, 1, &none, &mut out).unwrap();
    assert_eq!(values(&out), vec![0.0; 12]);
    // Selecting from an empty axis needs an empty list.
    let e = Tensor::zeros(&[0, 3], DType::F64, &Device::Cpu).unwrap();
    assert_eq!(index_select(&e, 0, &none).unwrap().shape(), &[0, 3]);
    assert_err(
        index_select(&e, 0, &indices(&[0])),
        &["entry 0 is 0, outside [0, 0)"],
    );
}

#[test]
fn into_entries_overwrite_every_element() {
    let x = tensor(random(30, &[3, 4]), &[3, 4]);
    let mut out = tensor(vec![f64::NAN; 12], &[4, 3]);
    permute_into(&x, &[1, 0], &mut out).unwrap();
    assert!(values(&out).iter().all(|v| v.is_finite()));
    let mut out = tensor(vec![f64::NAN; 6], &[3, 2]);
    narrow_into(&x, 1, 1, 2, &mut out).unwrap();
    assert_eq!(bits(&out), bits(&narrow(&x, 1, 1, 2).unwrap()));
    let g = tensor(random(31, &[3, 2]), &[3, 2]);
    let mut out = tensor(vec![f64::NAN; 12], &[3, 4]);
    narrow_backward_into(&g, 1, 1, &mut out).unwrap();
    assert_eq!(
        bits(&out),
        bits(&narrow_backward(&g, &[3, 4], 1, 1).unwrap())
    );
    let mut out = tensor(vec![f64::NAN; 24], &[6, 4]);
    concat_into(&[&x, &x], 0, &mut out).unwrap();
    assert!(values(&out).iter().all(|v| v.is_finite()));
    let mut out = tensor(vec![f64::NAN; 8], &[2, 4]);
    index_select_into(&x, 0, &indices(&[2, 2]), &mut out).unwrap();
    assert!(values(&out).iter().all(|v| v.is_finite()));
    let mut out = tensor(vec![f64::NAN; 12], &[3, 4]);
    index_select_backward_into(&g, 1, &indices(&[3, 3]), &mut out).unwrap();
    assert!(values(&out).iter().all(|v| v.is_finite()));
}

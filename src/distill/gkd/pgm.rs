//! GKD's prototype generation module (PGM, shared/spec/methods.md §2), run without gradients between
//! epochs, and the per-box pooled features it (and the robustness weights) start from.
//!
//! # Box features
//!
//! A box `[x1, y1, x2, y2]` (input pixels) on a map of stride `s` and size `H × W` is pooled over the
//! integer crop of rows `⌊y1/s⌋ ..= ⌊y2/s⌋` and columns `⌊x1/s⌋ ..= ⌊x2/s⌋` (both ends included, as the
//! official `F[:, y1:y2+1, x1:x2+1]`), clamped to the map so that every crop holds at least one cell:
//! `f = GAP(F[:, crop]) ∈ R^C` ([`box_gap_features`]). The official code slices without clamping (and
//! takes `abs()` of the coordinates while training); the two agree for boxes inside the image, and the
//! clamp keeps boxes that leave the map well defined. The pooling is one matrix product per image,
//! `f_b = P_b · F_bᵀ` with the constant `P_b[n, y·W + x] = 1/|crop_n|` on box `n`'s crop, so it runs on
//! either device, deterministically, and is differentiable on the tape ([`tape_box_gap_features`]).
//!
//! # Prototypes
//!
//! For every class `c` and level `l`, from the boxes of class `c` (GT boxes with `w, h >` the minimum size,
//! from at most [`PgmConfig::max_images_per_class`] training images containing the class), with the student
//! features `X^s ∈ R^{N×Ds}` and the teacher's `X^t ∈ R^{N×Dt}` of the same boxes ([`GkdPrototypes::build`],
//! [`joint_matching_pursuit`]):
//!
//! 1. row-normalise, `x̂ = x / max(‖x‖, ε)`;
//! 2. density in each space `ρ_i = Σ_j exp(−((1 − x̂_i·x̂_j)/σ)²)`, σ = 0.1 (the sum includes `j = i`);
//! 3. candidates `Γ = {i : ρ^s_i > ρ^s_(⌊qN⌋) ∧ ρ^t_i > ρ^t_(⌊qN⌋)}`, `ρ_(k)` the k-th smallest, q = 0.4;
//! 4. joint matching pursuit, α = 10, `R^s = X̂^s`, `R^t = X̂^t` (one residual row per box), for
//!    [`PgmConfig::max_prototypes`] = 10 iterations: for each candidate `k`, `a_n = x̂^s_k·R^s_n`,
//!    `b_n = x̂^t_k·R^t_n`, `w^s = (α(a + b) + a)/(1 + 2α)`, `w^t = (α(a + b) + b)/(1 + 2α)`,
//!    `err_k = Σ_n ‖x̂^s_k w^s_n − R^s_n‖² + ‖x̂^t_k w^t_n − R^t_n‖² + α(w^s_n − w^t_n)²`; pick the first
//!    `k* = argmin err_k`, record it and update `R_n ← R_n − x̂_{k*} w_{k*,n}` in both spaces;
//! 5. the prototypes are the *unnormalised* features of the chosen boxes (a box can be chosen twice,
//!    as in the official code; a repeat changes no maximum cosine).
//!
//! `err_k` is evaluated as `Σ_n ‖x̂_k‖²w_n² − 2w_n(x̂_k·R_n) + ‖R_n‖²` per space (the same number without
//! the official `K × D × N` intermediate), in f64, and candidates are processed in chunks, so memory
//! stays `O(N·D + chunk·N)`.
//!
//! Where the official code would fail, this one returns no prototypes for that (class, level) — and the
//! robustness weight of such a box is then 1 ([`crate::ops::prototype::gkd_robust_weights`]): a class with
//! no box in the sample, or an empty candidate set (e.g. one box, or all densities equal: nothing lies
//! strictly above the quantile).
//!
//! # How the engine calls it
//!
//! Before every epoch (the official `prototype_each_epoch = 1`):
//!
//! ```text
//! let sample = pgm_sample(&dataset_targets, num_classes, &cfg.pgm, seed)?;  // ≤ 800 images per class
//! let mut collector = GkdPrototypeCollector::new(num_levels);
//! for chunk in sample.images.chunks(batch) {
//!     // forward the chunk's images through the current student and the teacher (no gradient), then
//!     collector.add(&student_fpn, &teacher_fpn, &fpn_strides, &chunk_targets)?; // chunk[i].targets
//! }
//! distiller.set_prototypes(collector.build(num_classes, &cfg.pgm)?)?;
//! ```
//!
//! The official code takes the PGM features at the test-pipeline resolution; the engine should use its
//! evaluation transform. The teacher's features never change (it is frozen), so an engine may cache them
//! after the first epoch, as the official code does.

use crate::autograd::{Tape, Var};
use crate::distill::{Box4, ImageTargets};
use crate::error::{Error, Result};
use crate::ops::matmul::matmul;
use crate::ops::shape::{concat, narrow};
use crate::tensor::{DType, Device, Tensor};
use crate::testing::Rng;

/// Settings of the prototype generation; the defaults are GKD's released `pgm_cfg`, except the minimum
/// box size, scaled to small images.
#[derive(Clone, Debug, PartialEq)]
pub struct PgmConfig {
    /// Matching-pursuit iterations, i.e. prototypes chosen per class and level (repeats possible).
    /// Official: 10 (`max_num_prototypes`).
    pub max_prototypes: usize,
    /// `α`, the weight of the agreement term `‖w^s − w^t‖²`. Official: 10.
    pub alpha: f64,
    /// `σ` of the density kernel `exp(−((1 − cos)/σ)²)`. Official: 0.1.
    pub density_bandwidth: f64,
    /// `q`: candidates lie strictly above the `⌊qN⌋`-th smallest density in both spaces. Official: 0.4.
    pub density_quantile: f64,
    /// A box takes part only if its width and height both exceed this (input pixels). Official: 30 px on
    /// COCO images resized to 1333×800; 4 px here, the same ≈ 3.75 % of the short side on ~128 px images.
    pub min_box_size: f64,
    /// At most this many training images per class (drawn at random). Official: 800 (`max_samples`).
    pub max_images_per_class: usize,
    /// Lower bound of a norm a feature is divided by (`F.normalize`'s 1e-12).
    pub eps: f64,
}

impl Default for PgmConfig {
    fn default() -> Self {
        PgmConfig {
            max_prototypes: 10,
            alpha: 10.0,
            density_bandwidth: 0.1,
            density_quantile: 0.4,
            min_box_size: 4.0,
            max_images_per_class: 800,
            eps: 1e-12,
        }
    }
}

impl PgmConfig {
    fn validate(&self) -> Result<()> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::invalid(
                    name,
                    format!("expected a finite value > 0, got {v}"),
                ))
            }
        };
        positive("density_bandwidth", self.density_bandwidth)?;
        positive("eps", self.eps)?;
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(Error::invalid(
                "alpha",
                format!("expected a finite value ≥ 0, got {}", self.alpha),
            ));
        }
        if !(0.0..1.0).contains(&self.density_quantile) {
            return Err(Error::invalid(
                "density_quantile",
                format!("expected a value in [0, 1), got {}", self.density_quantile),
            ));
        }
        if !self.min_box_size.is_finite() {
            return Err(Error::invalid(
                "min_box_size",
                format!("expected a finite size, got {}", self.min_box_size),
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Box features

/// The crop of `b` on a map of stride `stride` and size `h × w`: `(y_lo, y_hi, x_lo, x_hi)`, both ends
/// included, clamped to the map (see the module docs).
pub(crate) fn gap_crop(b: &Box4, stride: f64, h: usize, w: usize) -> (usize, usize, usize, usize) {
    let cell = |v: f64, n: usize| ((v / stride).floor().max(0.0) as usize).min(n - 1);
    let (y_lo, x_lo) = (cell(b[1], h), cell(b[0], w));
    let (y_hi, x_hi) = (cell(b[3], h).max(y_lo), cell(b[2], w).max(x_lo));
    (y_lo, y_hi, x_lo, x_hi)
}

/// `P [N, H·W]` with `1/|crop_n|` on each box's crop (row-major cells).
fn pooling_matrix(boxes: &[Box4], stride: f64, h: usize, w: usize) -> Vec<f64> {
    let mut p = vec![0.0; boxes.len() * h * w];
    for (n, b) in boxes.iter().enumerate() {
        let (y_lo, y_hi, x_lo, x_hi) = gap_crop(b, stride, h, w);
        let inv = 1.0 / ((y_hi - y_lo + 1) * (x_hi - x_lo + 1)) as f64;
        let row = &mut p[n * h * w..(n + 1) * h * w];
        for y in y_lo..=y_hi {
            row[y * w + x_lo..=y * w + x_hi].fill(inv);
        }
    }
    p
}

/// Checks a feature map `[B, C, H, W]`, its stride and the per-image box lists; returns `(B, C, H, W)`.
pub(crate) fn check_level_boxes(
    shape: &[usize],
    stride: f64,
    boxes: &[Vec<Box4>],
    arg: &str,
) -> Result<(usize, usize, usize, usize)> {
    let [b, c, h, w] = shape[..] else {
        return Err(Error::shape(arg, "[B, C, H, W]", shape));
    };
    if h == 0 || w == 0 {
        return Err(Error::shape(arg, "a map with H, W ≥ 1", shape));
    }
    if !(stride.is_finite() && stride > 0.0) {
        return Err(Error::invalid(
            "stride",
            format!("expected a finite stride > 0 for `{arg}`, got {stride}"),
        ));
    }
    if boxes.len() != b {
        return Err(Error::invalid(
            "boxes",
            format!(
                "expected one box list per image of `{arg}` ({b}), got {}",
                boxes.len()
            ),
        ));
    }
    for (i, list) in boxes.iter().enumerate() {
        if let Some(bad) = list.iter().find(|bx| bx.iter().any(|v| !v.is_finite())) {
            return Err(Error::invalid(
                "boxes",
                format!("image {i} has a box with a non-finite coordinate: {bad:?}"),
            ));
        }
    }
    Ok((b, c, h, w))
}

/// The box features of one level on the tape: `level` `[B, C, H, W]` (any device), `boxes[b]` the boxes
/// of image `b` (input pixels), pooled over their integer crops (module docs). Returns `[N, C]`, the
/// boxes of image 0 first; differentiable with respect to `level` (each crop cell receives `g/|crop|`).
pub fn tape_box_gap_features(
    tape: &Tape,
    level: Var,
    stride: f64,
    boxes: &[Vec<Box4>],
) -> Result<Var> {
    let value = tape.value(level)?;
    let (_, c, h, w) = check_level_boxes(value.shape(), stride, boxes, "level")?;
    let mut parts = Vec::new();
    for (b, list) in boxes.iter().enumerate() {
        if list.is_empty() {
            continue;
        }
        let pool = Tensor::from_vec(pooling_matrix(list, stride, h, w), &[list.len(), h * w])?
            .into_dtype(value.dtype())?
            .to_device(&value.device())?;
        let image = tape.narrow(level, 0, b, 1)?;
        let image = tape.reshape(image, &[c, h * w])?;
        parts.push(tape.matmul(tape.constant(pool), image, false, true)?);
    }
    match parts.len() {
        0 => Ok(tape.constant(Tensor::zeros(&[0, c], value.dtype(), &value.device())?)),
        1 => Ok(parts[0]),
        _ => tape.concat(&parts, 0),
    }
}

/// [`tape_box_gap_features`] of a plain tensor (host or device): `[N, C]` in `level`'s dtype and device.
/// This is what the engine calls to feed [`GkdPrototypeCollector`], and what the robustness weights use.
pub fn box_gap_features(level: &Tensor, stride: f64, boxes: &[Vec<Box4>]) -> Result<Tensor> {
    let (_, c, h, w) = check_level_boxes(level.shape(), stride, boxes, "level")?;
    let mut parts = Vec::new();
    for (b, list) in boxes.iter().enumerate() {
        if list.is_empty() {
            continue;
        }
        let pool = Tensor::from_vec(pooling_matrix(list, stride, h, w), &[list.len(), h * w])?
            .into_dtype(level.dtype())?
            .to_device(&level.device())?;
        let image = narrow(level, 0, b, 1)?.reshape(&[c, h * w])?;
        parts.push(matmul(&pool, &image, false, true)?);
    }
    match parts.len() {
        0 => Tensor::zeros(&[0, c], level.dtype(), &level.device()),
        1 => Ok(parts.remove(0)),
        _ => concat(&parts.iter().collect::<Vec<_>>(), 0),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Prototype selection

/// Rows of `x` (`n × d`, row-major) divided by `max(‖x‖, eps)`.
fn normalized_rows(x: &[f64], d: usize, eps: f64) -> Vec<f64> {
    let mut out = x.to_vec();
    if d == 0 {
        return out;
    }
    for row in out.chunks_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(eps);
        row.iter_mut().for_each(|v| *v /= norm);
    }
    out
}

/// `A · Bᵀ` of row-major `A` (`m × d`) and `B` (`n × d`), as `m × n` row-major (f64 GEMM).
fn products(a: &[f64], m: usize, b: &[f64], n: usize, d: usize) -> Result<Vec<f64>> {
    if m == 0 || n == 0 {
        return Ok(vec![0.0; m * n]);
    }
    let at = Tensor::from_vec(a.to_vec(), &[m, d])?;
    let bt = Tensor::from_vec(b.to_vec(), &[n, d])?;
    matmul(&at, &bt, false, true)?.to_vec::<f64>()
}

/// Candidates per chunk of the matching pursuit and rows per chunk of the density (bounds the `chunk × N`
/// product held at once).
const CHUNK_ROWS: usize = 256;

/// `ρ_i = Σ_j exp(−((1 − x̂_i·x̂_j)/σ)²)` of row-normalised `x̂` (`n × d`).
pub(crate) fn densities(xn: &[f64], n: usize, d: usize, bandwidth: f64) -> Result<Vec<f64>> {
    let mut rho = Vec::with_capacity(n);
    for start in (0..n).step_by(CHUNK_ROWS) {
        let rows = CHUNK_ROWS.min(n - start);
        let g = products(&xn[start * d..(start + rows) * d], rows, xn, n, d)?;
        for row in g.chunks(n) {
            rho.push(
                row.iter()
                    .map(|&c| (-((1.0 - c) / bandwidth).powi(2)).exp())
                    .sum(),
            );
        }
    }
    Ok(rho)
}

/// The `⌊qN⌋`-th smallest value.
fn quantile_value(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let k = ((q * values.len() as f64).floor() as usize).min(values.len() - 1);
    sorted[k]
}

/// GKD's prototype choice for one class at one level (module docs, steps 1–4): `student` `[N, Ds]` and
/// `teacher` `[N, Dt]` hold the same boxes' features (any dtype or device; copied to the host as f64).
/// Returns the chosen rows in the order they were picked (`cfg.max_prototypes` of them, repeats
/// possible), or none when `N = 0` or no box passes the density filter in both spaces.
pub fn joint_matching_pursuit(
    student: &Tensor,
    teacher: &Tensor,
    cfg: &PgmConfig,
) -> Result<Vec<usize>> {
    cfg.validate()?;
    let (n, ds) = matrix_dims(student, "student")?;
    let (nt, dt) = matrix_dims(teacher, "teacher")?;
    if nt != n {
        return Err(Error::shape(
            "teacher",
            format!("[{n}, Dt] (one row per student row)"),
            teacher.shape(),
        ));
    }
    let xs = finite_host(student, "student")?;
    let xt = finite_host(teacher, "teacher")?;
    select_rows(&xs, &xt, n, ds, dt, cfg)
}

fn matrix_dims(t: &Tensor, arg: &str) -> Result<(usize, usize)> {
    match t.shape() {
        &[n, d] => Ok((n, d)),
        s => Err(Error::shape(arg, "[N, D]", s)),
    }
}

fn finite_host(t: &Tensor, arg: &str) -> Result<Vec<f64>> {
    let v = t.to_vec::<f64>()?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid(
            arg,
            format!("feature element {i} is not finite ({})", v[i]),
        ));
    }
    Ok(v)
}

fn select_rows(
    xs: &[f64],
    xt: &[f64],
    n: usize,
    ds: usize,
    dt: usize,
    cfg: &PgmConfig,
) -> Result<Vec<usize>> {
    if n == 0 || cfg.max_prototypes == 0 {
        return Ok(Vec::new());
    }
    if ds == 0 || dt == 0 {
        return Err(Error::invalid(
            "features",
            format!("expected feature widths ≥ 1, got student {ds} and teacher {dt}"),
        ));
    }
    let ns = normalized_rows(xs, ds, cfg.eps);
    let nt = normalized_rows(xt, dt, cfg.eps);
    let rho_s = densities(&ns, n, ds, cfg.density_bandwidth)?;
    let rho_t = densities(&nt, n, dt, cfg.density_bandwidth)?;
    let (lb_s, lb_t) = (
        quantile_value(&rho_s, cfg.density_quantile),
        quantile_value(&rho_t, cfg.density_quantile),
    );
    let candidates: Vec<usize> = (0..n)
        .filter(|&i| rho_s[i] > lb_s && rho_t[i] > lb_t)
        .collect();
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let gather = |x: &[f64], d: usize| -> Vec<f64> {
        candidates
            .iter()
            .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
            .collect()
    };
    let (atoms_s, atoms_t) = (gather(&ns, ds), gather(&nt, dt));
    let sq = |x: &[f64], d: usize| -> Vec<f64> {
        x.chunks(d).map(|r| r.iter().map(|v| v * v).sum()).collect()
    };
    let (atom_sq_s, atom_sq_t) = (sq(&atoms_s, ds), sq(&atoms_t, dt));
    let (mut res_s, mut res_t) = (ns, nt);
    let alpha = cfg.alpha;
    let denom = 1.0 + 2.0 * alpha;
    let weights = |a: f64, b: f64| ((alpha * (a + b) + a) / denom, (alpha * (a + b) + b) / denom);
    let k_total = candidates.len();
    let mut chosen = Vec::with_capacity(cfg.max_prototypes);
    for _ in 0..cfg.max_prototypes {
        let res_sq_total: f64 = sq(&res_s, ds).iter().chain(&sq(&res_t, dt)).sum();
        let mut best = (f64::INFINITY, usize::MAX);
        for start in (0..k_total).step_by(CHUNK_ROWS) {
            let rows = CHUNK_ROWS.min(k_total - start);
            let a = products(
                &atoms_s[start * ds..(start + rows) * ds],
                rows,
                &res_s,
                n,
                ds,
            )?;
            let b = products(
                &atoms_t[start * dt..(start + rows) * dt],
                rows,
                &res_t,
                n,
                dt,
            )?;
            for r in 0..rows {
                let k = start + r;
                let mut err = res_sq_total;
                for j in 0..n {
                    let (av, bv) = (a[r * n + j], b[r * n + j]);
                    let (ws, wt) = weights(av, bv);
                    err += atom_sq_s[k] * ws * ws - 2.0 * ws * av + atom_sq_t[k] * wt * wt
                        - 2.0 * wt * bv
                        + alpha * (ws - wt) * (ws - wt);
                }
                // Strictly smaller: ties go to the first candidate, as torch.argmin.
                if err < best.0 || best.1 == usize::MAX {
                    best = (err, k);
                }
            }
        }
        let k = best.1;
        chosen.push(candidates[k]);
        let a = products(&atoms_s[k * ds..(k + 1) * ds], 1, &res_s, n, ds)?;
        let b = products(&atoms_t[k * dt..(k + 1) * dt], 1, &res_t, n, dt)?;
        for j in 0..n {
            let (ws, wt) = weights(a[j], b[j]);
            for (r, atom) in res_s[j * ds..(j + 1) * ds]
                .iter_mut()
                .zip(&atoms_s[k * ds..(k + 1) * ds])
            {
                *r -= atom * ws;
            }
            for (r, atom) in res_t[j * dt..(j + 1) * dt]
                .iter_mut()
                .zip(&atoms_t[k * dt..(k + 1) * dt])
            {
                *r -= atom * wt;
            }
        }
    }
    Ok(chosen)
}

// ---------------------------------------------------------------------------------------------------------
// Prototype sets

/// The prototypes of one FPN level: paired rows (row `k` of both matrices comes from the same box).
#[derive(Debug)]
pub struct LevelPrototypes {
    /// `[K, Ds]` f64, host: the chosen boxes' (unnormalised) student features.
    pub student: Tensor,
    /// `[K, Dt]` f64, host: the same boxes' teacher features.
    pub teacher: Tensor,
    /// `[K]` i64, host: each prototype's class, ascending.
    pub labels: Tensor,
    /// Each prototype's row in the features [`GkdPrototypes::build`] was given.
    pub source_rows: Vec<usize>,
}

/// GKD's prototypes, per FPN level and class (module docs). Build them with [`GkdPrototypes::build`] or a
/// [`GkdPrototypeCollector`], hand them to [`super::GkdDistiller::set_prototypes`].
#[derive(Debug)]
pub struct GkdPrototypes {
    /// One entry per FPN level, finest first.
    pub levels: Vec<LevelPrototypes>,
    /// The class count the labels were checked against.
    pub num_classes: usize,
}

impl GkdPrototypes {
    /// Runs the selection for every class and level: `student[l]` `[N, Ds]` and `teacher[l]` `[N, Dt]` are
    /// level `l`'s features of the same `N` boxes, `labels[n]` the class of box `n`. Boxes should already
    /// be the sampled, size-filtered set ([`pgm_sample`]).
    pub fn build(
        student: &[Tensor],
        teacher: &[Tensor],
        labels: &[usize],
        num_classes: usize,
        cfg: &PgmConfig,
    ) -> Result<GkdPrototypes> {
        cfg.validate()?;
        if student.len() != teacher.len() {
            return Err(Error::invalid(
                "teacher",
                format!(
                    "expected {} levels (as the student), got {}",
                    student.len(),
                    teacher.len()
                ),
            ));
        }
        if let Some(&bad) = labels.iter().find(|&&c| c >= num_classes) {
            return Err(Error::invalid(
                "labels",
                format!("label {bad} is out of range for {num_classes} classes"),
            ));
        }
        let mut levels = Vec::with_capacity(student.len());
        for (l, (s, t)) in student.iter().zip(teacher).enumerate() {
            let (n, ds) = matrix_dims(s, "student")?;
            let (nt, dt) = matrix_dims(t, "teacher")?;
            if n != labels.len() || nt != n {
                return Err(Error::invalid(
                    "student",
                    format!(
                        "level {l}: {n} student rows and {nt} teacher rows for {} labels",
                        labels.len()
                    ),
                ));
            }
            let xs = finite_host(s, "student")?;
            let xt = finite_host(t, "teacher")?;
            let mut rows = Vec::new();
            let mut row_labels = Vec::new();
            for class in 0..num_classes {
                let members: Vec<usize> = (0..n).filter(|&i| labels[i] == class).collect();
                let pick = |x: &[f64], d: usize| -> Vec<f64> {
                    members
                        .iter()
                        .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
                        .collect()
                };
                let chosen =
                    select_rows(&pick(&xs, ds), &pick(&xt, dt), members.len(), ds, dt, cfg)?;
                row_labels.extend(std::iter::repeat(class as i64).take(chosen.len()));
                rows.extend(chosen.into_iter().map(|k| members[k]));
            }
            let gather = |x: &[f64], d: usize| -> Result<Tensor> {
                let v: Vec<f64> = rows
                    .iter()
                    .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
                    .collect();
                Tensor::from_vec(v, &[rows.len(), d])
            };
            levels.push(LevelPrototypes {
                student: gather(&xs, ds)?,
                teacher: gather(&xt, dt)?,
                labels: Tensor::from_vec(row_labels.clone(), &[row_labels.len()])?,
                source_rows: rows,
            });
        }
        Ok(GkdPrototypes {
            levels,
            num_classes,
        })
    }

    /// Total prototypes over all levels.
    pub fn len(&self) -> usize {
        self.levels.iter().map(|l| l.source_rows.len()).sum()
    }

    /// No prototype at any level.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---------------------------------------------------------------------------------------------------------
// Sampling and collection

/// One image of a PGM sample: its index in the dataset and the boxes it contributes.
#[derive(Clone, Debug, PartialEq)]
pub struct PgmImage {
    /// Position in the dataset passed to [`pgm_sample`].
    pub index: usize,
    /// The boxes (and labels) of the classes this image was drawn for that pass the size filter.
    pub targets: ImageTargets,
}

/// The images the PGM runs on, ascending by dataset index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PgmSample {
    /// The drawn images with their boxes.
    pub images: Vec<PgmImage>,
}

/// Draws GKD's PGM sample from the dataset's ground truth: for every class, at most
/// `cfg.max_images_per_class` images (uniformly at random, seeded) among those with a box of that class
/// whose width and height exceed `cfg.min_box_size`; each drawn image contributes those boxes of that
/// class. An image drawn for several classes appears once, with the boxes of each.
pub fn pgm_sample(
    dataset: &[ImageTargets],
    num_classes: usize,
    cfg: &PgmConfig,
    seed: u64,
) -> Result<PgmSample> {
    cfg.validate()?;
    let keep = |b: &Box4| b[2] - b[0] > cfg.min_box_size && b[3] - b[1] > cfg.min_box_size;
    for (i, t) in dataset.iter().enumerate() {
        if t.boxes.len() != t.labels.len() {
            return Err(Error::invalid(
                "dataset",
                format!(
                    "image {i} has {} boxes and {} labels",
                    t.boxes.len(),
                    t.labels.len()
                ),
            ));
        }
        if let Some(&bad) = t.labels.iter().find(|&&c| c >= num_classes) {
            return Err(Error::invalid(
                "dataset",
                format!("image {i} has label {bad}, out of range for {num_classes} classes"),
            ));
        }
    }
    let mut rng = Rng::new(seed);
    let mut drawn = vec![Vec::<usize>::new(); dataset.len()];
    for class in 0..num_classes {
        let mut images: Vec<usize> = (0..dataset.len())
            .filter(|&i| {
                let t = &dataset[i];
                t.boxes
                    .iter()
                    .zip(&t.labels)
                    .any(|(b, &c)| c == class && keep(b))
            })
            .collect();
        // Fisher–Yates, then the first `max_images_per_class`.
        for i in (1..images.len()).rev() {
            images.swap(i, rng.below(i + 1));
        }
        images.truncate(cfg.max_images_per_class);
        for i in images {
            drawn[i].push(class);
        }
    }
    let images = drawn
        .into_iter()
        .enumerate()
        .filter(|(_, classes)| !classes.is_empty())
        .map(|(index, classes)| {
            let t = &dataset[index];
            let (boxes, labels) = t
                .boxes
                .iter()
                .zip(&t.labels)
                .filter(|(b, c)| classes.contains(c) && keep(b))
                .map(|(b, &c)| (*b, c))
                .unzip();
            PgmImage {
                index,
                targets: ImageTargets { boxes, labels },
            }
        })
        .collect();
    Ok(PgmSample { images })
}

/// Accumulates the per-box features of the PGM sample, batch by batch, on the host.
#[derive(Clone, Debug)]
pub struct GkdPrototypeCollector {
    student: Vec<Vec<f64>>,
    teacher: Vec<Vec<f64>>,
    dims: Vec<Option<(usize, usize)>>,
    labels: Vec<usize>,
}

impl GkdPrototypeCollector {
    /// A collector for `num_levels` FPN levels.
    pub fn new(num_levels: usize) -> Self {
        GkdPrototypeCollector {
            student: vec![Vec::new(); num_levels],
            teacher: vec![Vec::new(); num_levels],
            dims: vec![None; num_levels],
            labels: Vec::new(),
        }
    }

    /// Boxes collected so far.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Nothing collected yet.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Adds one batch: the student's and the teacher's FPN levels `[B, C, H_l, W_l]` (host or device)
    /// of the batch's images, the levels' strides, and each image's sample boxes (`PgmImage::targets`).
    pub fn add(
        &mut self,
        student_fpn: &[&Tensor],
        teacher_fpn: &[&Tensor],
        strides: &[f64],
        targets: &[ImageTargets],
    ) -> Result<()> {
        let levels = self.student.len();
        for (what, len) in [
            ("student_fpn", student_fpn.len()),
            ("teacher_fpn", teacher_fpn.len()),
            ("strides", strides.len()),
        ] {
            if len != levels {
                return Err(Error::invalid(
                    what,
                    format!("expected {levels} levels, got {len}"),
                ));
            }
        }
        for (i, t) in targets.iter().enumerate() {
            if t.boxes.len() != t.labels.len() {
                return Err(Error::invalid(
                    "targets",
                    format!(
                        "image {i} has {} boxes and {} labels",
                        t.boxes.len(),
                        t.labels.len()
                    ),
                ));
            }
        }
        let boxes: Vec<Vec<Box4>> = targets.iter().map(|t| t.boxes.clone()).collect();
        let mut batch = Vec::with_capacity(levels);
        for l in 0..levels {
            let fs = box_gap_features(student_fpn[l], strides[l], &boxes)?;
            let ft = box_gap_features(teacher_fpn[l], strides[l], &boxes)?;
            let dims = (fs.shape()[1], ft.shape()[1]);
            if let Some(seen) = self.dims[l].filter(|&d| d != dims) {
                return Err(Error::invalid(
                    "student_fpn",
                    format!("level {l} has widths {dims:?} after {seen:?} in earlier batches"),
                ));
            }
            batch.push((fs.to_vec::<f64>()?, ft.to_vec::<f64>()?, dims));
        }
        for (l, (fs, ft, dims)) in batch.into_iter().enumerate() {
            self.student[l].extend(fs);
            self.teacher[l].extend(ft);
            self.dims[l] = Some(dims);
        }
        self.labels
            .extend(targets.iter().flat_map(|t| t.labels.iter().copied()));
        Ok(())
    }

    /// [`GkdPrototypes::build`] on everything collected.
    pub fn build(&self, num_classes: usize, cfg: &PgmConfig) -> Result<GkdPrototypes> {
        let n = self.labels.len();
        let mut student = Vec::with_capacity(self.student.len());
        let mut teacher = Vec::with_capacity(self.student.len());
        for l in 0..self.student.len() {
            let (ds, dt) = self.dims[l].unwrap_or((0, 0));
            student.push(Tensor::from_vec(self.student[l].clone(), &[n, ds])?);
            teacher.push(Tensor::from_vec(self.teacher[l].clone(), &[n, dt])?);
        }
        GkdPrototypes::build(&student, &teacher, &self.labels, num_classes, cfg)
    }
}

/// The prototypes of level `l` as the features' dtype and device, for the robustness weights.
pub(crate) fn level_on(
    p: &LevelPrototypes,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    Ok((
        p.student.to_dtype(dtype)?.to_device(device)?,
        p.teacher.to_dtype(dtype)?.to_device(device)?,
    ))
}

//! Prototype ops: the soft assignment of feature vectors to prototypes (forward and backward, to both
//! inputs) and GKD's hard max-cosine match with its robustness weight (no gradient), on the CPU and on
//! CUDA (shared/spec/methods.md §2, §6.5).
//!
//! Inputs are row-major matrices: feature rows `x` `[N, D]` (pooled box features, one row per box) and
//! prototypes `p` `[K, D]`. Storage may be f32, f16 or bf16 (f64 too on the CPU); arithmetic is f32 (f64
//! for f64 inputs): half storage is widened once and each result rounded once. Results are bitwise
//! reproducible run to run on both devices (no atomics anywhere: every sum has one fixed order).
//!
//! # Soft assignment ([`soft_assignment`])
//!
//! `a_ik = softmax_k(−D²_ik / τ)` with `D²_ik = max(‖x_i‖² + ‖p_k‖² − 2x_i·p_k, 0)` — the squared distance
//! from one matrix product ([`crate::ops::matmul`], deterministic on both devices) and the row norms;
//! the expansion's rounding can go below 0, hence the clamp (as on `torch.cdist`'s matrix-product path).
//! The softmax subtracts the row maximum of the logits before exponentiating, so logits of any
//! magnitude (a point far from every prototype) are safe. [`AssignmentOutput::LogProbabilities`]
//! returns `log a_ik = z_ik − max_l z_il − log Σ_l exp(z_il − max_l z_il)` instead (`log_softmax`,
//! finite where `a` underflows to 0).
//!
//! Backward (both `x` and `p` are differentiable), given the upstream gradient `da` (or `dlog a`):
//! `dℓ_ik = a_ik(da_ik − Σ_l a_il da_il)` (log output: `dℓ_ik = dlog a_ik − a_ik Σ_l dlog a_il`),
//! `G_ik = dD²_ik = −dℓ_ik/τ`, then, with no `N×K×D` intermediate:
//!
//! - `dx_i = 2Σ_k G_ik(x_i − p_k)`, i.e. `dX = 2(diag(G1)X − GP)`;
//! - `dp_k = −2Σ_i G_ik(x_i − p_k)`, i.e. `dP = 2(diag(Gᵀ1)P − GᵀX)`.
//!
//! The clamp at 0 is taken with slope 1: it is only active on rounding noise of nearly coincident
//! points, where the factor `x_i − p_k` is itself ≈ 0. The backward reads `a` from the forward's output
//! rather than recomputing the `[N, K]` product, and first renormalises each row of it to sum to 1 — a
//! no-op in exact arithmetic. With half storage the stored `a` is rounded (relative 2^-11 for f16, 2^-8
//! for bf16) and its rows no longer sum to 1 exactly; without the renormalisation `Σ_k G_ik` would be
//! that rounding error instead of 0, and `dx`'s term `diag(G1)X` would scale it by `‖x_i‖`, ruining
//! the gradient of points far from the prototypes (`‖x‖ ≫ ‖x − p‖`).
//!
//! Precision: the expansion loses precision by cancellation, an absolute error of about
//! `1e-7·(‖x‖² + ‖p‖²)` in f32, i.e. `1e-7·(‖x‖² + ‖p‖²)/τ` in the logits. Choose `τ` on the scale of the
//! squared distances (as any useful soft assignment does), or use f64 for very large features.
//!
//! # Hard max-cosine match ([`max_cosine_match`], [`gkd_robust_weights`])
//!
//! GKD's prototypes carry a class label; a box of class `c` is compared with the prototypes of class `c`
//! only: `s_i = max_{k: label(p_k) = label(x_i)} cos(x_i, p_k)` and its arg-max `k_i`, with
//! `cos(x, p) = x̂·p̂`, `x̂ = x / max(‖x‖, ε)` (`F.normalize`, `ε` = 1e-12). The robustness weight of a box
//! compares its best match in the student's and the teacher's feature spaces:
//! `r_i = 1 − |s^s_i − s^t_i|`. No gradient: GKD uses both as constants.
//!
//! # Non-finite values and empty inputs
//!
//! Nothing is checked for finiteness on the host (it would cost a device synchronisation per call);
//! instead a NaN or infinity in an input propagates to NaN in the results that depend on it, never to a
//! finite wrong number: a poisoned point's row of `a` (a NaN logit poisons its row's normaliser), its
//! similarity and its weight. A prototype with an infinite coordinate gives, per row, either a NaN
//! distance (the row becomes NaN) or `+∞` (weight exactly 0, the limit). A row whose squared norm
//! overflows (f32: `‖x‖ ≳ 1.8e19`) normalises to NaN rather than to a silent 0, as in
//! [`crate::ops::similarity::normalize_rows`]. Empty inputs give empty (or constant) results without
//! any kernel launch; each entry documents its own.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod primitives;

use super::matmul::matmul;
use super::validate;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};
use primitives as prim;

/// PyTorch's `F.normalize` epsilon, used by GKD's official code for its cosines.
pub const DEFAULT_EPS: f64 = 1e-12;

/// COCO's 80 object classes: the class count of GKD's released configs (its prototypes are per class).
pub const COCO_CLASSES: usize = 80;

/// The largest row count of a matrix-product operand (65 535 tiles of 64 rows in the CUDA grid).
const MAX_PRODUCT_ROWS: usize = 65_535 * 64;

/// What [`soft_assignment`] returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AssignmentOutput {
    /// `a_ik = softmax_k(−D²_ik/τ)` (`torch.softmax`).
    #[default]
    Probabilities,
    /// `log a_ik` (`torch.log_softmax`), finite where `a_ik` underflows to 0.
    LogProbabilities,
}

/// Settings of the soft assignment `a_ik = softmax_k(−‖x_i − p_k‖²/τ)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SoftAssignConfig {
    /// The temperature `τ`, finite and > 0: large `τ` spreads each row over many prototypes, small `τ`
    /// approaches the hard nearest-prototype assignment.
    pub temperature: f64,
    /// Probabilities or log-probabilities.
    pub output: AssignmentOutput,
}

impl Default for SoftAssignConfig {
    /// `τ = 1` and probabilities: the plain softmax of the negative squared distances. There is no
    /// official value to follow — GKD's released code assigns by the hard max-cosine match
    /// ([`max_cosine_match`]), not by a softmax — so `τ` should be set to the scale of the data's
    /// squared distances.
    fn default() -> Self {
        SoftAssignConfig {
            temperature: 1.0,
            output: AssignmentOutput::Probabilities,
        }
    }
}

/// Settings of GKD's hard max-cosine match and robustness weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaxCosineConfig {
    /// The number of classes `C`: every row label and prototype label must lie in `[0, C)` (the background
    /// label of mmdet, `C`, is not a class with prototypes, so it is rejected rather than silently
    /// unmatched).
    pub num_classes: usize,
    /// Lower bound of the norm a row is divided by; finite and > 0.
    pub eps: f64,
}

impl Default for MaxCosineConfig {
    /// `C` = 80 (COCO, GKD's configs) and `eps = 1e-12` (`F.normalize`).
    fn default() -> Self {
        MaxCosineConfig {
            num_classes: COCO_CLASSES,
            eps: DEFAULT_EPS,
        }
    }
}

/// The result of [`max_cosine_match`]: one entry per feature row.
#[derive(Debug)]
pub struct MaxCosineMatch {
    /// `[N]`, the rows' dtype: `max_k cos(x_i, p_k)` over the prototypes of the row's class; NaN for a row
    /// whose class has no prototype.
    pub similarity: Tensor,
    /// `[N]` i64: the arg-max prototype (a row index into the prototypes, the first one on ties); −1 for a
    /// row whose class has no prototype.
    pub index: Tensor,
}

/// The inputs of [`gkd_robust_weights`]: the same boxes pooled from the student's and the teacher's
/// feature maps, their labels, and GKD's paired prototypes (row `k` of both prototype matrices comes from
/// the same box, so they share one label list).
#[derive(Clone, Copy, Debug)]
pub struct RobustWeightInputs<'a> {
    /// `[N, Ds]` box features in the student's space (the raw student map, not the adapted one).
    pub student: &'a Tensor,
    /// `[N, Dt]` the same boxes in the teacher's space (same dtype and device as `student`).
    pub teacher: &'a Tensor,
    /// `[N]` i64 class labels of the boxes, on the host or the features' device.
    pub labels: &'a Tensor,
    /// `[K, Ds]` prototypes in the student's space.
    pub student_prototypes: &'a Tensor,
    /// `[K, Dt]` prototypes in the teacher's space.
    pub teacher_prototypes: &'a Tensor,
    /// `[K]` i64 class labels of the prototypes, on the host or the features' device.
    pub prototype_labels: &'a Tensor,
}

// ---------------------------------------------------------------------------------------------------------
// Soft assignment

/// Soft assignment of the rows of `x` `[N, D]` to the prototypes `prototypes` `[K, D]` (same dtype and
/// device): `a_ik = softmax_k(−‖x_i − p_k‖²/τ)` `[N, K]` in `x`'s dtype, or its log with
/// [`AssignmentOutput::LogProbabilities`] (see the module docs). `N = 0` or `K = 0` give an empty
/// `[N, K]`; `D = 0` puts every point at distance 0 from every prototype, so each row is uniform, `1/K`.
pub fn soft_assignment(x: &Tensor, prototypes: &Tensor, cfg: &SoftAssignConfig) -> Result<Tensor> {
    let (n, k, _) = check_pair(x, prototypes, "x", "prototypes")?;
    let mut out = Tensor::zeros(&[n, k], x.dtype(), &x.device())?;
    soft_assignment_into(x, prototypes, cfg, &mut out)?;
    Ok(out)
}

/// [`soft_assignment`] writing into `out` (`[N, K]`, `x`'s dtype and device; its contents are never read).
pub fn soft_assignment_into(
    x: &Tensor,
    prototypes: &Tensor,
    cfg: &SoftAssignConfig,
    out: &mut Tensor,
) -> Result<()> {
    check_temperature(cfg.temperature)?;
    let (n, k, _) = check_pair(x, prototypes, "x", "prototypes")?;
    validate::output(out, "out", &[n, k], x.dtype(), &x.device())?;
    if n == 0 || k == 0 {
        return Ok(());
    }
    let xw = prim::widen(x)?;
    let pw = prim::widen(prototypes)?;
    let gram = matmul(&xw, &pw, false, true)?;
    let x_norms = prim::row_sq_norms(&xw)?;
    let p_norms = prim::row_sq_norms(&pw)?;
    prim::assignment_from_gram_into(&gram, &x_norms, &p_norms, cfg, out)
}

/// Gradients of [`soft_assignment`] given its `output` (`a`, or `log a`, as the forward returned it with
/// the same `cfg`) and the upstream gradient `grad_out`, both `[N, K]` in `x`'s dtype and device.
/// Returns `(dx, dp)` in the inputs' dtype; `dp` only when `need_grad_prototypes` (fixed prototypes, or a
/// detached teacher, skip one product).
pub fn soft_assignment_backward(
    x: &Tensor,
    prototypes: &Tensor,
    output: &Tensor,
    grad_out: &Tensor,
    cfg: &SoftAssignConfig,
    need_grad_prototypes: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    check_temperature(cfg.temperature)?;
    let (n, k, d) = check_pair(x, prototypes, "x", "prototypes")?;
    check_same(output, "output", x, &[n, k])?;
    check_same(grad_out, "grad_out", x, &[n, k])?;
    let device = x.device();
    if n == 0 || k == 0 || d == 0 {
        let dx = Tensor::zeros(&[n, d], x.dtype(), &device)?;
        let dp = need_grad_prototypes
            .then(|| Tensor::zeros(&[k, d], x.dtype(), &device))
            .transpose()?;
        return Ok((dx, dp));
    }
    let (g, row_sums) = prim::assignment_grad(output, grad_out, cfg)?;
    let pw = prim::widen(prototypes)?;
    let gp = matmul(&g, &pw, false, false)?;
    let dx = prim::combine(x, &row_sums, &gp)?;
    let dp = if need_grad_prototypes {
        let xw = prim::widen(x)?;
        let col_sums = prim::col_sums(&g)?;
        let gx = matmul(&g, &xw, true, false)?;
        Some(prim::combine(prototypes, &col_sums, &gx)?)
    } else {
        None
    };
    Ok((dx, dp))
}

// ---------------------------------------------------------------------------------------------------------
// Hard max-cosine match

/// GKD's hard match of the rows of `x` `[N, D]` (class `labels` `[N]`, i64) against `prototypes` `[K, D]`
/// (same dtype and device as `x`; class `prototype_labels` `[K]`, i64): per row, the largest cosine
/// similarity to a prototype of the row's own class and that prototype's index (see [`MaxCosineMatch`];
/// the first index on ties; a NaN cosine wins, so a poisoned row reads NaN). A row whose class has no
/// prototype gets similarity NaN and index −1. Labels may be on the host or on `x`'s device (device
/// labels are copied to the host to be validated and grouped); every label must lie in
/// `[0, cfg.num_classes)`.
///
/// `N = 0` gives empty results; `K = 0` gives NaN and −1 for every row, without a launch. `D = 0`
/// normalises every row to the empty vector: cosine 0 with the first prototype of the class.
pub fn max_cosine_match(
    x: &Tensor,
    labels: &Tensor,
    prototypes: &Tensor,
    prototype_labels: &Tensor,
    cfg: &MaxCosineConfig,
) -> Result<MaxCosineMatch> {
    let n = check_matrix(x, "x")?.0;
    let device = x.device();
    let mut out = MaxCosineMatch {
        similarity: Tensor::zeros(&[n], x.dtype(), &device)?,
        index: Tensor::zeros(&[n], DType::I64, &device)?,
    };
    max_cosine_match_into(x, labels, prototypes, prototype_labels, cfg, &mut out)?;
    Ok(out)
}

/// [`max_cosine_match`] writing into `out` (`similarity`: `[N]`, `x`'s dtype and device; `index`: `[N]`
/// i64 on `x`'s device; their contents are never read).
pub fn max_cosine_match_into(
    x: &Tensor,
    labels: &Tensor,
    prototypes: &Tensor,
    prototype_labels: &Tensor,
    cfg: &MaxCosineConfig,
    out: &mut MaxCosineMatch,
) -> Result<()> {
    let plan = match_plan(
        x,
        labels,
        prototypes,
        prototype_labels,
        cfg,
        "x",
        "prototypes",
    )?;
    let device = x.device();
    validate::output(
        &out.similarity,
        "similarity",
        &[plan.rows],
        x.dtype(),
        &device,
    )?;
    validate::output(&out.index, "index", &[plan.rows], DType::I64, &device)?;
    prim::max_cosine_into(x, prototypes, &plan, &mut out.similarity, &mut out.index)
}

/// GKD's robustness weight of each box (shared/spec/methods.md §2, RDM):
/// `r_i = 1 − |max_k cos(f^s_i, P^s_k) − max_k cos(f^t_i, P^t_k)|`, both maxima over the prototypes of the
/// box's class ([`max_cosine_match`] in each space). Returns `[N]` in the features' dtype. A box whose
/// class has no prototype gets weight 1: with no evidence about it, it is not down-weighted. A NaN or
/// infinite feature makes its box's weight NaN. `N = 0` gives `[0]`; `K = 0` gives all ones.
pub fn gkd_robust_weights(
    inputs: &RobustWeightInputs<'_>,
    cfg: &MaxCosineConfig,
) -> Result<Tensor> {
    let n = check_matrix(inputs.student, "student")?.0;
    let mut out = Tensor::zeros(&[n], inputs.student.dtype(), &inputs.student.device())?;
    gkd_robust_weights_into(inputs, cfg, &mut out)?;
    Ok(out)
}

/// [`gkd_robust_weights`] writing into `out` (`[N]`, the features' dtype and device; never read).
pub fn gkd_robust_weights_into(
    inputs: &RobustWeightInputs<'_>,
    cfg: &MaxCosineConfig,
    out: &mut Tensor,
) -> Result<()> {
    let (student, teacher) = (inputs.student, inputs.teacher);
    let (n, _) = check_matrix(student, "student")?;
    let (nt, _) = check_matrix(teacher, "teacher")?;
    if nt != n {
        return Err(Error::shape(
            "teacher",
            format!("[{n}, Dt] (one row per student row)"),
            teacher.shape(),
        ));
    }
    validate::same_device(&[("student", student), ("teacher", teacher)])?;
    validate::same_dtype(&[("student", student), ("teacher", teacher)])?;
    let (ks, _) = check_matrix(inputs.student_prototypes, "student_prototypes")?;
    let (kt, _) = check_matrix(inputs.teacher_prototypes, "teacher_prototypes")?;
    if kt != ks {
        return Err(Error::shape(
            "teacher_prototypes",
            format!("[{ks}, Dt] (paired with the student prototypes)"),
            inputs.teacher_prototypes.shape(),
        ));
    }
    let plan = match_plan(
        student,
        inputs.labels,
        inputs.student_prototypes,
        inputs.prototype_labels,
        cfg,
        "student",
        "student_prototypes",
    )?;
    // The teacher side shares the labels, so its grouping is the student's; only its shapes need checking.
    check_pair(
        teacher,
        inputs.teacher_prototypes,
        "teacher",
        "teacher_prototypes",
    )?;
    validate::output(out, "out", &[n], student.dtype(), &student.device())?;
    prim::robust_weights_into(
        student,
        teacher,
        inputs.student_prototypes,
        inputs.teacher_prototypes,
        &plan,
        out,
    )
}

/// The prototype candidates of every row, grouped on the host: `members` lists the prototype indices
/// sorted by (class, index), and row `i` compares with `members[ranges[2i]..ranges[2i + 1]]` (an empty
/// range when its class has no prototype).
#[derive(Debug)]
pub(crate) struct MatchPlan {
    pub rows: usize,
    pub members: Vec<i64>,
    pub ranges: Vec<i64>,
    pub eps: f64,
}

/// Validates a max-cosine call and groups the prototypes by class.
fn match_plan(
    x: &Tensor,
    labels: &Tensor,
    prototypes: &Tensor,
    prototype_labels: &Tensor,
    cfg: &MaxCosineConfig,
    x_arg: &str,
    p_arg: &str,
) -> Result<MatchPlan> {
    check_eps(cfg.eps)?;
    if cfg.num_classes == 0 {
        return Err(Error::invalid("num_classes", "must be at least 1, got 0"));
    }
    validate::fits_i32(cfg.num_classes, "num_classes", "num_classes")?;
    let (n, k, _) = check_pair(x, prototypes, x_arg, p_arg)?;
    let device = x.device();
    let row_labels = check_labels(labels, "labels", n, x_arg, &device, cfg.num_classes)?;
    let proto_labels = check_labels(
        prototype_labels,
        "prototype_labels",
        k,
        p_arg,
        &device,
        cfg.num_classes,
    )?;
    // Counting sort of the prototypes by class: stable, so each class lists its prototypes in ascending
    // index order, which is the order ties are broken in.
    let mut starts = vec![0usize; cfg.num_classes + 1];
    for &c in &proto_labels {
        starts[c as usize + 1] += 1;
    }
    for c in 0..cfg.num_classes {
        starts[c + 1] += starts[c];
    }
    let mut fill = starts.clone();
    let mut members = vec![0i64; k];
    for (index, &c) in proto_labels.iter().enumerate() {
        members[fill[c as usize]] = index as i64;
        fill[c as usize] += 1;
    }
    let ranges = row_labels
        .iter()
        .flat_map(|&c| [starts[c as usize] as i64, starts[c as usize + 1] as i64])
        .collect();
    Ok(MatchPlan {
        rows: n,
        members,
        ranges,
        eps: cfg.eps,
    })
}

/// Labels: i64 `[rows]` on the host or `device`, each in `[0, classes)`; returned on the host.
fn check_labels(
    labels: &Tensor,
    arg: &str,
    rows: usize,
    rows_of: &str,
    device: &Device,
    classes: usize,
) -> Result<Vec<i64>> {
    validate::dtype(labels, arg, DType::I64)?;
    if labels.shape() != [rows] {
        return Err(Error::shape(
            arg,
            format!("[{rows}] (one label per row of `{rows_of}`)"),
            labels.shape(),
        ));
    }
    if !labels.device().is_cpu() && labels.device() != *device {
        let expected = if device.is_cpu() {
            "cpu".to_string()
        } else {
            format!("cpu or {device}")
        };
        return Err(Error::Device {
            arg: arg.into(),
            expected,
            got: labels.device().to_string(),
        });
    }
    let values = labels.to_vec::<i64>()?;
    if let Some(i) = values
        .iter()
        .position(|&c| c < 0 || c as u64 >= classes as u64)
    {
        return Err(Error::invalid(
            arg,
            format!(
                "entry {i} is {}, outside [0, {classes}) (num_classes = {classes})",
                values[i]
            ),
        ));
    }
    Ok(values)
}

// ---------------------------------------------------------------------------------------------------------
// Shared checks

fn check_temperature(tau: f64) -> Result<()> {
    if tau.is_finite() && tau > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "temperature",
            format!("must be finite and > 0, got {tau}"),
        ))
    }
}

fn check_eps(eps: f64) -> Result<()> {
    if eps.is_finite() && eps > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "eps",
            format!("must be finite and > 0, got {eps}"),
        ))
    }
}

/// `t` must be a float `[rows, D]` matrix whose extents fit the kernels; returns `(rows, D)`.
fn check_matrix(t: &Tensor, arg: &str) -> Result<(usize, usize)> {
    validate::rank(t, arg, 2, "[rows, D]")?;
    validate::float(t, arg)?;
    let (rows, d) = (t.shape()[0], t.shape()[1]);
    validate::fits_i32(d, arg, "D")?;
    if rows > MAX_PRODUCT_ROWS {
        return Err(Error::invalid(
            arg,
            format!("rows = {rows} exceeds {MAX_PRODUCT_ROWS} (65535 tiles of 64 rows)"),
        ));
    }
    Ok((rows, d))
}

/// Features `x` `[N, D]` and prototypes `[K, D]` on one device with one dtype; returns `(N, K, D)`.
fn check_pair(
    x: &Tensor,
    prototypes: &Tensor,
    x_arg: &str,
    p_arg: &str,
) -> Result<(usize, usize, usize)> {
    let (n, d) = check_matrix(x, x_arg)?;
    let (k, dp) = check_matrix(prototypes, p_arg)?;
    if dp != d {
        return Err(Error::shape(
            p_arg,
            format!("[K, {d}] (the same D as `{x_arg}`)"),
            prototypes.shape(),
        ));
    }
    validate::same_device(&[(x_arg, x), (p_arg, prototypes)])?;
    validate::same_dtype(&[(x_arg, x), (p_arg, prototypes)])?;
    Ok((n, k, d))
}

/// A tensor that goes with `x`: `shape`, and `x`'s dtype and device.
fn check_same(t: &Tensor, arg: &str, x: &Tensor, shape: &[usize]) -> Result<()> {
    validate::shape(t, arg, shape)?;
    validate::same_device(&[("x", x), (arg, t)])?;
    validate::same_dtype(&[("x", x), (arg, t)])?;
    Ok(())
}

#[cfg(test)]
mod tests;

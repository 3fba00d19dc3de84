//! Pairwise instance similarity: row L2-normalisation, cosine Gram matrices (self and cross), squared and
//! plain Euclidean distances, and Dsig's edge loss fused with its gradient — forward and backward, on the
//! CPU and on CUDA (shared/spec/methods.md §1, §6.2, §6.3).
//!
//! Every Gram or cross product runs on [`crate::ops::matmul`] (deterministic on both devices); this module
//! adds the row-wise and element-wise parts around it (normalisation, distance assembly, the fused loss and
//! its gradient). Inputs are row-major matrices `[rows, D]`: one row per node (a pooled RoI feature
//! flattened to `D = C·PH·PW`). Storage may be f32, f16 or bf16 (f64 too on the CPU); arithmetic is f32
//! (f64 for f64 inputs), half storage is widened once and the result rounded once at the end. Results
//! are bitwise reproducible run to run on both devices (no atomics anywhere).
//!
//! # Formulas
//!
//! - **Row normalisation** ([`normalize_rows`]): `x̂ = x / max(‖x‖, ε)`, `ε` = 1e-12 as PyTorch's
//!   `F.normalize`. Backward: `dx = (dx̂ − x̂(x̂·dx̂))/‖x‖` if `‖x‖ > ε`, else `dx̂/ε` (the clamp is constant in
//!   `x` there, as in PyTorch). A row whose squared norm is not finite (it holds inf or NaN, or overflows:
//!   `‖x‖ ≳ 1.8e19` in f32) normalises to NaN, so an overflow never turns into a silent 0.
//! - **Cosine Gram** ([`cosine_gram`]): `S = X̂X̂ᵀ` `[m, m]`; backward `dX̂ = (G + Gᵀ)X̂`, then through the
//!   normalisation. **Cross** ([`cosine_cross`]): `S = X̂Ŷᵀ` `[m, n]`; `dX̂ = GŶ`, `dŶ = GᵀX̂`.
//! - **Euclidean** ([`pairwise_distance`]): `D²_ij = max(‖x_i‖² + ‖y_j‖² − 2x_i·y_j, 0)` and `D = √D²`.
//!   The expansion loses precision by cancellation for nearly equal points (an absolute error of about
//!   `1e-7·‖x‖²` in f32), and its rounding can go below 0, hence the clamp; `torch.cdist` does the same on its
//!   matrix-product path (it clamps at 1e-30 before the square root). Backward with `G' = dD²` (squared) or
//!   `dD/(2D)` (plain): `dX = 2(diag(G'1)X − G'Y)`, `dY = 2(diag(G'ᵀ1)Y − G'ᵀX)`, where `G'` is 0 wherever the
//!   distance is exactly 0 — clamped pairs and coincident points: the subgradient 0 at the kink of `√·`,
//!   which is also what `torch.cdist`'s backward gives there. Self mode (`y = None`) is the distance of the
//!   rows of `x` to each other: the diagonal is exactly 0 (not rounding noise) with gradient 0, and the
//!   gradient counts both roles of every row (`G'` is replaced by `G' + G'ᵀ`). In cross mode two identical
//!   points get exactly 0 only when `‖x‖²` and `x·x` round identically: they do on the CPU (both summed in
//!   the same order), not on CUDA (GEMM and row reduction sum in different orders), where such a pair gets
//!   `√(rounding noise)` and a gradient of arbitrary direction — use self mode for distances within a set.
//! - **Dsig edge loss** ([`dsig_edge_loss_with_grad`]): see [`DsigEdgeConfig`].
//!
//! # Non-finite values
//!
//! Nothing is checked for finiteness on the host (that would cost a device synchronisation per call);
//! instead a NaN or infinity in any input propagates to NaN (to NaN or infinity for distances) in the
//! results that depend on it — the loss, the affected rows of Gram matrices and gradients — never to a
//! finite wrong number.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod primitives;

pub use super::loss::LossAndGrad;
use super::matmul::{matmul, matmul_into};
use super::validate;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};
use primitives as prim;

/// PyTorch's `F.normalize` epsilon, used by Dsig's official code.
pub const DEFAULT_EPS: f64 = 1e-12;

/// Settings of the cosine ops (normalisation, Gram, cross).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineConfig {
    /// Lower bound of the norm a row is divided by; finite and > 0.
    pub eps: f64,
}

impl Default for CosineConfig {
    /// `eps = 1e-12`, as `torch.nn.functional.normalize`.
    fn default() -> Self {
        CosineConfig { eps: DEFAULT_EPS }
    }
}

/// Which pairwise distance [`pairwise_distance`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distance {
    /// `D²_ij = max(‖x_i‖² + ‖y_j‖² − 2x_i·y_j, 0)`.
    Squared,
    /// `D_ij = √D²_ij` (`torch.cdist(x, y, p=2)`).
    Euclidean,
}

/// Dsig's edge (structure) loss between the student's and the teacher's instance graphs of one image.
///
/// With `V^s = Xs[nodes]`, `V^t = Xt[nodes]` (`[m, D]`; all rows when `nodes` is `None`) and
/// `A = N(V)N(V)ᵀ` the cosine Gram matrix of the row-normalised nodes:
///
/// `L = loss_weight · ½ · (1/m²) · Σ_ij (A^s_ij − A^t_ij)²`
///
/// — the official code's `0.5 * F.mse_loss(A_t, A_s)` (`Dsig/projects/Distillation/utils/matrix_utils.py`,
/// `corr_mat_mse_loss`): the mean runs over all `m²` entries, the diagonal included (it is 1 on both sides
/// for non-zero rows, so it only dilutes the mean). Dsig sums this over the images of a batch: call once per
/// image. An empty graph (`m = 0`) has loss 0, as in the official code. Gradient (student only; the teacher
/// is detached): `G = loss_weight·(A^s − A^t)/m²`, `dV̂^s = (G + Gᵀ)V̂^s = 2GV̂^s`, then through the row
/// normalisation, and scattered back to the selected rows of `Xs` (zeros elsewhere).
///
/// Magnitudes: with `m` vertices and rows of norm `r`, gradient entries are of order `1/(m²·r)` — about
/// 1e-7 to 1e-9 at Dsig's sizes, below f16's normal range (6e-5). With f16 storage, scale the loss (a
/// `loss_weight` of 2^10–2^16, unscaled later, as in mixed-precision training) or use bf16 or f32.
///
/// A student vertex that is exactly zero (e.g. a RoI pooled entirely off the map) normalises to 0 and its
/// gradient goes through the `1/eps` branch: entries of order 1e10, exactly what PyTorch computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DsigEdgeConfig {
    /// Normalisation epsilon (`F.normalize`'s 1e-12).
    pub eps: f64,
    /// Multiplies the loss and its gradient. Dsig's configs use 2.0 (R18←R50, MNV2←R50, EB0←R101) or 1.0
    /// (R50←R101, R101←R152); the default is 1.0, the bare loss.
    pub loss_weight: f64,
}

impl Default for DsigEdgeConfig {
    fn default() -> Self {
        DsigEdgeConfig {
            eps: DEFAULT_EPS,
            loss_weight: 1.0,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Row normalisation

/// Row L2-normalisation of `x` `[m, D]`: `x / max(‖x‖, eps)` per row (`F.normalize(x, dim=1)`).
pub fn normalize_rows(x: &Tensor, cfg: &CosineConfig) -> Result<Tensor> {
    check_eps(cfg.eps)?;
    check_matrix(x, "x")?;
    prim::normalize(x, None, cfg.eps, x.dtype())
}

/// [`normalize_rows`] writing into `out` (`[m, D]`, `x`'s dtype and device; its contents are never read).
pub fn normalize_rows_into(x: &Tensor, cfg: &CosineConfig, out: &mut Tensor) -> Result<()> {
    check_eps(cfg.eps)?;
    let (m, d) = check_matrix(x, "x")?;
    validate::output_like(out, x, &[m, d])?;
    if out.numel() == 0 {
        return Ok(());
    }
    prim::normalize_into(x, None, cfg.eps, out)
}

/// Gradient of [`normalize_rows`] with respect to `x`, given `grad_out` `[m, D]`.
pub fn normalize_rows_backward(
    x: &Tensor,
    grad_out: &Tensor,
    cfg: &CosineConfig,
) -> Result<Tensor> {
    check_eps(cfg.eps)?;
    let (m, d) = check_matrix(x, "x")?;
    check_grad(grad_out, x, &[m, d])?;
    prim::normalize_backward(x, None, grad_out, m, cfg.eps)
}

// ---------------------------------------------------------------------------------------------------------
// Cosine Gram (self) and cross similarity

/// Pairwise cosine similarity of the rows of `x` `[m, D]`: `S = X̂X̂ᵀ` `[m, m]`.
pub fn cosine_gram(x: &Tensor, cfg: &CosineConfig) -> Result<Tensor> {
    let (m, _) = check_matrix(x, "x")?;
    let mut out = Tensor::zeros(&[m, m], x.dtype(), &x.device())?;
    cosine_gram_into(x, cfg, &mut out)?;
    Ok(out)
}

/// [`cosine_gram`] writing into `out` (`[m, m]`, `x`'s dtype and device).
pub fn cosine_gram_into(x: &Tensor, cfg: &CosineConfig, out: &mut Tensor) -> Result<()> {
    check_eps(cfg.eps)?;
    let (m, _) = check_matrix(x, "x")?;
    validate::output_like(out, x, &[m, m])?;
    if m == 0 {
        return Ok(());
    }
    let x_hat = prim::normalize(x, None, cfg.eps, prim::compute_dtype(x.dtype()))?;
    product_into(&x_hat, &x_hat, false, true, out)
}

/// Gradient of [`cosine_gram`] with respect to `x`, given `grad_out` `[m, m]`. Recomputes `X̂` (one cheap
/// row pass) rather than keeping it from the forward.
pub fn cosine_gram_backward(x: &Tensor, grad_out: &Tensor, cfg: &CosineConfig) -> Result<Tensor> {
    check_eps(cfg.eps)?;
    let (m, d) = check_matrix(x, "x")?;
    check_grad(grad_out, x, &[m, m])?;
    if m == 0 || d == 0 {
        return Tensor::zeros(&[m, d], x.dtype(), &x.device());
    }
    let x_hat = prim::normalize(x, None, cfg.eps, prim::compute_dtype(x.dtype()))?;
    let sym = prim::symmetrize(grad_out)?;
    let grad_hat = matmul(&sym, &x_hat, false, false)?;
    prim::normalize_backward(x, None, &grad_hat, m, cfg.eps)
}

/// Cosine similarity of every row of `x` `[m, D]` with every row of `y` `[n, D]`: `S = X̂Ŷᵀ` `[m, n]`.
pub fn cosine_cross(x: &Tensor, y: &Tensor, cfg: &CosineConfig) -> Result<Tensor> {
    let (m, n, _) = check_pair(x, y)?;
    let mut out = Tensor::zeros(&[m, n], x.dtype(), &x.device())?;
    cosine_cross_into(x, y, cfg, &mut out)?;
    Ok(out)
}

/// [`cosine_cross`] writing into `out` (`[m, n]`, `x`'s dtype and device).
pub fn cosine_cross_into(
    x: &Tensor,
    y: &Tensor,
    cfg: &CosineConfig,
    out: &mut Tensor,
) -> Result<()> {
    check_eps(cfg.eps)?;
    let (m, n, _) = check_pair(x, y)?;
    validate::output_like(out, x, &[m, n])?;
    if m * n == 0 {
        return Ok(());
    }
    let compute = prim::compute_dtype(x.dtype());
    let x_hat = prim::normalize(x, None, cfg.eps, compute)?;
    let y_hat = prim::normalize(y, None, cfg.eps, compute)?;
    product_into(&x_hat, &y_hat, false, true, out)
}

/// Gradients of [`cosine_cross`] given `grad_out` `[m, n]`: `(dx, dy)`, with `dy` only when `need_grad_y`
/// (`y` may be fixed prototypes or a detached teacher; skipping it saves a product).
pub fn cosine_cross_backward(
    x: &Tensor,
    y: &Tensor,
    grad_out: &Tensor,
    need_grad_y: bool,
    cfg: &CosineConfig,
) -> Result<(Tensor, Option<Tensor>)> {
    check_eps(cfg.eps)?;
    let (m, n, d) = check_pair(x, y)?;
    check_grad(grad_out, x, &[m, n])?;
    if m * n * d == 0 {
        let dx = Tensor::zeros(&[m, d], x.dtype(), &x.device())?;
        let dy = need_grad_y
            .then(|| Tensor::zeros(&[n, d], x.dtype(), &x.device()))
            .transpose()?;
        return Ok((dx, dy));
    }
    let compute = prim::compute_dtype(x.dtype());
    let x_hat = prim::normalize(x, None, cfg.eps, compute)?;
    let y_hat = prim::normalize(y, None, cfg.eps, compute)?;
    let g = prim::widen(grad_out)?;
    let dx_hat = matmul(&g, &y_hat, false, false)?;
    let dx = prim::normalize_backward(x, None, &dx_hat, m, cfg.eps)?;
    let dy = if need_grad_y {
        let dy_hat = matmul(&g, &x_hat, true, false)?;
        Some(prim::normalize_backward(y, None, &dy_hat, n, cfg.eps)?)
    } else {
        None
    };
    Ok((dx, dy))
}

// ---------------------------------------------------------------------------------------------------------
// Euclidean distances

/// Pairwise distances between the rows of `x` `[m, D]` and `y` `[n, D]` (`[m, n]`), or, with `y = None`,
/// between the rows of `x` (`[m, m]`, exact zeros on the diagonal). See the module docs for the clamp.
pub fn pairwise_distance(x: &Tensor, y: Option<&Tensor>, kind: Distance) -> Result<Tensor> {
    let (m, n, _) = check_optional_pair(x, y)?;
    let mut out = Tensor::zeros(&[m, n], x.dtype(), &x.device())?;
    pairwise_distance_into(x, y, kind, &mut out)?;
    Ok(out)
}

/// [`pairwise_distance`] writing into `out` (`[m, n]`, `x`'s dtype and device).
pub fn pairwise_distance_into(
    x: &Tensor,
    y: Option<&Tensor>,
    kind: Distance,
    out: &mut Tensor,
) -> Result<()> {
    let (m, n, _) = check_optional_pair(x, y)?;
    validate::output_like(out, x, &[m, n])?;
    if m * n == 0 {
        return Ok(());
    }
    let xw = prim::widen(x)?;
    let yw = y.map(prim::widen).transpose()?;
    let gram = matmul(&xw, yw.as_deref().unwrap_or(&xw), false, true)?;
    let nx = prim::row_sq_norms(x)?;
    let ny = y.map(prim::row_sq_norms).transpose()?;
    let mode = prim::PairMode {
        self_mode: y.is_none(),
        take_sqrt: kind == Distance::Euclidean,
    };
    prim::assemble_distance_into(&gram, &nx, ny.as_ref().unwrap_or(&nx), mode, out)
}

/// Gradients of [`pairwise_distance`] given its `output` (the distances, used for the `1/(2D)` factor and
/// the zero mask) and `grad_out`, both `[m, n]`. Returns `(dx, dy)`; `dy` is `Some` only in cross mode and
/// when `need_grad_y`.
pub fn pairwise_distance_backward(
    x: &Tensor,
    y: Option<&Tensor>,
    output: &Tensor,
    grad_out: &Tensor,
    kind: Distance,
    need_grad_y: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (m, n, d) = check_optional_pair(x, y)?;
    check_grad(output, x, &[m, n]).map_err(|e| e.for_argument("grad_out", "output"))?;
    check_grad(grad_out, x, &[m, n])?;
    let need_grad_y = need_grad_y && y.is_some();
    if m * n * d == 0 {
        let dx = Tensor::zeros(&[m, d], x.dtype(), &x.device())?;
        let dy = need_grad_y
            .then(|| Tensor::zeros(&[n, d], x.dtype(), &x.device()))
            .transpose()?;
        return Ok((dx, dy));
    }
    let mode = prim::PairMode {
        self_mode: y.is_none(),
        take_sqrt: kind == Distance::Euclidean,
    };
    let gp = prim::distance_grad_prep(grad_out, output, mode)?;
    let row_sums = prim::row_sums(&gp)?;
    let xw = prim::widen(x)?;
    let yw = y.map(prim::widen).transpose()?;
    let prod_x = matmul(&gp, yw.as_deref().unwrap_or(&xw), false, false)?;
    let dx = prim::combine(x, &row_sums, &prod_x)?;
    let dy = match y {
        Some(y) if need_grad_y => {
            let col_sums = prim::col_sums(&gp)?;
            let prod_y = matmul(&gp, &xw, true, false)?;
            Some(prim::combine(y, &col_sums, &prod_y)?)
        }
        _ => None,
    };
    Ok((dx, dy))
}

// ---------------------------------------------------------------------------------------------------------
// Dsig edge loss

/// The Dsig edge loss (see [`DsigEdgeConfig`]) of `student` and `teacher` (`[M, D]` each, same dtype and
/// device) over the rows `nodes` (an i64 list on any device; `None` = all rows). Returns the scalar loss
/// (shape `[]`, f32 — f64 for f64 features).
///
/// `nodes` selects the graph's vertices inside the op — no gathered copy is needed on the caller's side.
/// Every index must lie in `[0, M)` and appear once (a duplicated vertex would be a duplicated row and
/// column of the graph, almost certainly a bug in the caller's mining, so it is an error).
pub fn dsig_edge_loss(
    student: &Tensor,
    teacher: &Tensor,
    nodes: Option<&Tensor>,
    cfg: &DsigEdgeConfig,
) -> Result<Tensor> {
    Ok(edge_loss(student, teacher, nodes, cfg, None)?.0)
}

/// Gradient of [`dsig_edge_loss`] with respect to `student` (`[M, D]`, zero on unselected rows), given the
/// upstream gradient of the scalar loss.
pub fn dsig_edge_loss_backward(
    student: &Tensor,
    teacher: &Tensor,
    nodes: Option<&Tensor>,
    grad_loss: f64,
    cfg: &DsigEdgeConfig,
) -> Result<Tensor> {
    if !grad_loss.is_finite() {
        return Err(Error::invalid(
            "grad_loss",
            format!("must be finite, got {grad_loss}"),
        ));
    }
    let (_, grad) = edge_loss(student, teacher, nodes, cfg, Some(grad_loss))?;
    grad.ok_or_else(|| Error::invalid("grad_loss", "gradient was not computed"))
}

/// [`dsig_edge_loss`] and its gradient with respect to `student` in one pass: the two Gram matrices are
/// built once, one kernel produces the loss and the gradient matrix `2G`, and one more product plus the
/// normalisation backward give `dXs`. The loss has shape `[]` (f64 for f64 features, f32 otherwise); the
/// gradient is `[M, D]` in the student's dtype, zero on rows outside `nodes`.
pub fn dsig_edge_loss_with_grad(
    student: &Tensor,
    teacher: &Tensor,
    nodes: Option<&Tensor>,
    cfg: &DsigEdgeConfig,
) -> Result<LossAndGrad> {
    let (loss, grad) = edge_loss(student, teacher, nodes, cfg, Some(1.0))?;
    let grad_student =
        grad.ok_or_else(|| Error::invalid("student", "gradient was not computed"))?;
    Ok(LossAndGrad {
        loss,
        grad: grad_student,
    })
}

/// Shared body of the edge-loss entries; computes the gradient when `grad_loss` is given.
fn edge_loss(
    student: &Tensor,
    teacher: &Tensor,
    nodes: Option<&Tensor>,
    cfg: &DsigEdgeConfig,
    grad_loss: Option<f64>,
) -> Result<(Tensor, Option<Tensor>)> {
    check_eps(cfg.eps)?;
    if !cfg.loss_weight.is_finite() {
        return Err(Error::invalid(
            "loss_weight",
            format!("must be finite, got {}", cfg.loss_weight),
        ));
    }
    let (rows, d) = check_matrix(student, "student")?;
    check_matrix(teacher, "teacher")?;
    if teacher.shape() != student.shape() {
        return Err(Error::shape(
            "teacher",
            format!("{:?} (the student's shape)", student.shape()),
            teacher.shape(),
        ));
    }
    validate::same_device(&[("student", student), ("teacher", teacher)])?;
    validate::same_dtype(&[("student", student), ("teacher", teacher)])?;
    let device = student.device();
    let index = match nodes {
        Some(t) => Some(node_index(t, rows, &device)?),
        None => None,
    };
    let m = index.as_ref().map_or(rows, |t| t.numel());
    let compute = prim::compute_dtype(student.dtype());
    let zero_grad = || Tensor::zeros(&[rows, d], student.dtype(), &device);
    if m == 0 || d == 0 {
        // No vertices: the official code's `feat.sum() * 0.`. D = 0: every row normalises to 0, A^s = A^t.
        let loss = Tensor::zeros(&[], compute, &device)?;
        return Ok((loss, grad_loss.map(|_| zero_grad()).transpose()?));
    }
    let s_hat = prim::normalize(student, index.as_ref(), cfg.eps, compute)?;
    let t_hat = prim::normalize(teacher, index.as_ref(), cfg.eps, compute)?;
    let mut a_s = matmul(&s_hat, &s_hat, false, true)?;
    let a_t = matmul(&t_hat, &t_hat, false, true)?;
    let mm = (m * m) as f64;
    let loss_scale = cfg.loss_weight / (2.0 * mm);
    let grad_scale = grad_loss.map(|g| 2.0 * g * cfg.loss_weight / mm);
    let loss = prim::edge_loss_and_grad(&mut a_s, &a_t, loss_scale, grad_scale)?;
    let grad = match grad_scale {
        None => None,
        Some(_) => {
            // a_s now holds 2G: dV̂s = 2G·V̂s.
            let grad_hat = matmul(&a_s, &s_hat, false, false)?;
            Some(prim::normalize_backward(
                student,
                index.as_ref(),
                &grad_hat,
                rows,
                cfg.eps,
            )?)
        }
    };
    Ok((loss, grad))
}

/// Validates a vertex list against `rows` and returns it as an i64 tensor on `device`.
fn node_index(nodes: &Tensor, rows: usize, device: &Device) -> Result<Tensor> {
    validate::rank(nodes, "nodes", 1, "[m] (row indices)")?;
    validate::dtype(nodes, "nodes", DType::I64)?;
    let host = nodes.to_vec::<i64>()?;
    validate::fits_i32(host.len(), "nodes", "m")?;
    let mut first_seen = vec![usize::MAX; rows];
    for (pos, &v) in host.iter().enumerate() {
        if v < 0 || v as u64 >= rows as u64 {
            return Err(Error::invalid(
                "nodes",
                format!("entry {pos} is {v}, outside [0, {rows}) (the feature rows)"),
            ));
        }
        let seen = &mut first_seen[v as usize];
        if *seen != usize::MAX {
            return Err(Error::invalid(
                "nodes",
                format!(
                    "row {v} appears twice (entries {} and {pos}); vertices must be distinct",
                    *seen
                ),
            ));
        }
        *seen = pos;
    }
    Tensor::from_vec(host, &[nodes.numel()])?.to_device(device)
}

// ---------------------------------------------------------------------------------------------------------
// Shared helpers

/// `out = op(a)·op(b)` (compute-dtype operands) in `out`'s dtype: directly when the dtypes agree, through a
/// compute-dtype product and one rounding otherwise.
fn product_into(a: &Tensor, b: &Tensor, ta: bool, tb: bool, out: &mut Tensor) -> Result<()> {
    if out.dtype() == a.dtype() {
        return matmul_into(a, b, ta, tb, out);
    }
    let wide = matmul(a, b, ta, tb)?;
    prim::convert_into(&wide, out)
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
    validate::fits_i32(rows, arg, "rows")?;
    validate::fits_i32(d, arg, "D")?;
    Ok((rows, d))
}

/// `x` `[m, D]` and `y` `[n, D]` on one device with one dtype; returns `(m, n, D)`.
fn check_pair(x: &Tensor, y: &Tensor) -> Result<(usize, usize, usize)> {
    let (m, d) = check_matrix(x, "x")?;
    let (n, dy) = check_matrix(y, "y")?;
    if dy != d {
        return Err(Error::shape(
            "y",
            format!("[n, {d}] (the same D as `x`)"),
            y.shape(),
        ));
    }
    validate::same_device(&[("x", x), ("y", y)])?;
    validate::same_dtype(&[("x", x), ("y", y)])?;
    Ok((m, n, d))
}

fn check_optional_pair(x: &Tensor, y: Option<&Tensor>) -> Result<(usize, usize, usize)> {
    match y {
        Some(y) => check_pair(x, y),
        None => {
            let (m, d) = check_matrix(x, "x")?;
            Ok((m, m, d))
        }
    }
}

/// An upstream gradient: `shape`, and `like`'s dtype and device.
fn check_grad(grad: &Tensor, like: &Tensor, shape: &[usize]) -> Result<()> {
    validate::shape(grad, "grad_out", shape)?;
    validate::same_device(&[("x", like), ("grad_out", grad)])?;
    validate::same_dtype(&[("x", like), ("grad_out", grad)])?;
    Ok(())
}

#[cfg(test)]
mod tests;

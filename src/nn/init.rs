//! Seeded parameter initialisation, as `torch.nn.init` / mmcv's `normal_init` and `kaiming_init`.

use crate::error::Result;
use crate::tensor::Tensor;
use crate::testing::Rng;

/// `(fan_in, fan_out)` of a weight `[out, in, k...]` (PyTorch's `_calculate_fan_in_and_fan_out`).
pub fn fans(shape: &[usize]) -> (usize, usize) {
    let receptive: usize = shape.iter().skip(2).product();
    let (out, inp) = (
        shape.first().copied().unwrap_or(1),
        shape.get(1).copied().unwrap_or(1),
    );
    (inp * receptive, out * receptive)
}

/// Normal(0, std²) values, f32.
pub fn normal(shape: &[usize], std: f64, rng: &mut Rng) -> Result<Tensor> {
    let n = shape.iter().product();
    Tensor::from_vec(
        (0..n)
            .map(|_| (rng.normal() * std) as f32)
            .collect::<Vec<f32>>(),
        shape,
    )
}

/// Kaiming-normal for a ReLU network with `mode = fan_out` (mmcv's `kaiming_init`, torchvision's ResNet):
/// `std = √2 / √fan_out`.
pub fn kaiming_normal_fan_out(shape: &[usize], rng: &mut Rng) -> Result<Tensor> {
    let (_, fan_out) = fans(shape);
    normal(shape, (2.0 / fan_out.max(1) as f64).sqrt(), rng)
}

/// A constant tensor, f32.
pub fn constant(shape: &[usize], value: f64) -> Result<Tensor> {
    let n = shape.iter().product();
    Tensor::from_vec(vec![value as f32; n], shape)
}

/// mmcv's `bias_init_with_prob(p)`: the logit bias that makes `σ(b) = p` (`−log((1 − p)/p)`), used for
/// classification heads trained with focal-type losses.
pub fn bias_init_with_prob(p: f64) -> f64 {
    -((1.0 - p) / p).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fans_and_statistics() {
        assert_eq!(fans(&[64, 32, 3, 3]), (288, 576));
        assert_eq!(fans(&[10, 5]), (5, 10));
        let w = kaiming_normal_fan_out(&[64, 32, 3, 3], &mut Rng::new(3)).unwrap();
        let v = w.to_vec::<f64>().unwrap();
        let var = v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64;
        assert!((var - 2.0 / 576.0).abs() < 0.1 * 2.0 / 576.0, "{var}");
        assert!((bias_init_with_prob(0.01) + 4.59512).abs() < 1e-4);
        // Seeded: identical twice.
        let a = normal(&[5], 1.0, &mut Rng::new(9))
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        let b = normal(&[5], 1.0, &mut Rng::new(9))
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(a, b);
    }
}

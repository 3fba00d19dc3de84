// Kernels for the `dist_kl` op family (see src/ops/dist_kl/).
#include "common.cuh"

// Kernels for the `matmul` op family (see src/ops/matmul/).
#include "common.cuh"

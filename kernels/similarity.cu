// Kernels for the `similarity` op family (see src/ops/similarity/).
#include "common.cuh"

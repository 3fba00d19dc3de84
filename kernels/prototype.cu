// Kernels for the `prototype` op family (see src/ops/prototype/).
#include "common.cuh"

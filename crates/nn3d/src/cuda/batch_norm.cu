// CUDA kernels of the fused batch norm (the four custom ops of `ops/batch_norm.rs`).
//
// Compiled to PTX by `build.rs` when the `cuda` feature is on and loaded by `cuda/batch_norm.rs`.
// Data is f32, contiguous `[N, C, S]` with S = D*H*W; reductions accumulate in f64 and combine
// their partial sums in a fixed order, so results are deterministic. Argument types must match the
// Rust launch code exactly: pointers, `int` = i32, `long long` = i64, `double` = f64.

#define BLOCK 256

// Tree reduction of two f64 values over one block of BLOCK threads; thread 0 gets the sums.
__device__ void block_sum2(double* sh1, double* sh2, double a, double b) {
    const int t = threadIdx.x;
    sh1[t] = a;
    sh2[t] = b;
    __syncthreads();
    for (int half = BLOCK / 2; half > 0; half >>= 1) {
        if (t < half) {
            sh1[t] += sh1[t + half];
            sh2[t] += sh2[t + half];
        }
        __syncthreads();
    }
}

// Partial sums of (x - x0) and (x - x0)^2 per channel, x0 = the channel's first value (as the CPU
// kernel, so variances of values far from zero stay accurate).
// grid = (blocks_per_channel, C); partial = [2, C, blocks_per_channel].
extern "C" __global__ void bn_stats_partial(const float* x, int n, int c, long long s,
                                            double* partial) {
    __shared__ double sh1[BLOCK];
    __shared__ double sh2[BLOCK];
    const int ch = blockIdx.y;
    const int nb = gridDim.x;
    const double origin = (double)x[(long long)ch * s];
    const long long total = (long long)n * s;
    double s1 = 0.0, s2 = 0.0;
    for (long long j = (long long)blockIdx.x * BLOCK + threadIdx.x; j < total;
         j += (long long)nb * BLOCK) {
        const long long b = j / s;
        const long long k = j - b * s;
        const double d = (double)x[(b * c + ch) * s + k] - origin;
        s1 += d;
        s2 += d * d;
    }
    block_sum2(sh1, sh2, s1, s2);
    if (threadIdx.x == 0) {
        partial[(long long)ch * nb + blockIdx.x] = sh1[0];
        partial[(long long)(c + ch) * nb + blockIdx.x] = sh2[0];
    }
}

// out = [2, C]: mean and biased variance, from bn_stats_partial's partial sums.
extern "C" __global__ void bn_stats_finish(const double* partial, int nb, const float* x, int n,
                                           int c, long long s, float* out) {
    const int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double s1 = 0.0, s2 = 0.0;
    for (int i = 0; i < nb; ++i) {
        s1 += partial[(long long)ch * nb + i];
        s2 += partial[(long long)(c + ch) * nb + i];
    }
    const double m = (double)n * (double)s;
    const double shifted_mean = s1 / m;
    const double var = s2 / m - shifted_mean * shifted_mean;
    out[ch] = (float)((double)x[(long long)ch * s] + shifted_mean);
    out[c + ch] = (float)(var > 0.0 ? var : 0.0);
}

// Partial sums of dy and dy * (x - mean) per channel; stats = [2, C] (row 0 = mean).
// grid = (blocks_per_channel, C); partial = [2, C, blocks_per_channel].
extern "C" __global__ void bn_grad_sums_partial(const float* x, const float* dy,
                                                const float* stats, int n, int c, long long s,
                                                double* partial) {
    __shared__ double sh1[BLOCK];
    __shared__ double sh2[BLOCK];
    const int ch = blockIdx.y;
    const int nb = gridDim.x;
    const double mean = (double)stats[ch];
    const long long total = (long long)n * s;
    double s1 = 0.0, s2 = 0.0;
    for (long long j = (long long)blockIdx.x * BLOCK + threadIdx.x; j < total;
         j += (long long)nb * BLOCK) {
        const long long b = j / s;
        const long long k = j - b * s;
        const long long i = (b * c + ch) * s + k;
        const double g = (double)dy[i];
        s1 += g;
        s2 += g * ((double)x[i] - mean);
    }
    block_sum2(sh1, sh2, s1, s2);
    if (threadIdx.x == 0) {
        partial[(long long)ch * nb + blockIdx.x] = sh1[0];
        partial[(long long)(c + ch) * nb + blockIdx.x] = sh2[0];
    }
}

// out = [2, C]: sum of dy, sum of dy * (x - mean), from bn_grad_sums_partial's partial sums.
extern "C" __global__ void bn_grad_sums_finish(const double* partial, int nb, int c, float* out) {
    const int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double s1 = 0.0, s2 = 0.0;
    for (int i = 0; i < nb; ++i) {
        s1 += partial[(long long)ch * nb + i];
        s2 += partial[(long long)(c + ch) * nb + i];
    }
    out[ch] = (float)s1;
    out[c + ch] = (float)s2;
}

// y = (x - mean) * gamma / sqrt(var + eps) + beta; stats = [2, C] (mean, var),
// affine = [2, C] (gamma, beta). grid = (blocks over S, N * C): blockIdx.y is the (n, c) plane.
extern "C" __global__ void bn_forward(const float* x, const float* stats, const float* affine,
                                      int c, long long s, double eps, float* y) {
    const long long plane = blockIdx.y;
    const int ch = (int)(plane % c);
    const float mean = stats[ch];
    const float scale = (float)((double)affine[ch] / sqrt((double)stats[c + ch] + eps));
    const float beta = affine[c + ch];
    const float* xp = x + plane * s;
    float* yp = y + plane * s;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < s;
         k += (long long)gridDim.x * blockDim.x) {
        yp[k] = (xp[k] - mean) * scale + beta;
    }
}

// dx = a * dy + b * (x - centre) + cc; coeffs = [4, C] (rows a, b, centre, cc).
// grid = (blocks over S, N * C): blockIdx.y is the (n, c) plane.
extern "C" __global__ void bn_grad_input(const float* x, const float* dy, const float* coeffs,
                                         int c, long long s, float* dx) {
    const long long plane = blockIdx.y;
    const int ch = (int)(plane % c);
    const float a = coeffs[ch];
    const float b = coeffs[c + ch];
    const float centre = coeffs[2 * c + ch];
    const float cc = coeffs[3 * c + ch];
    const float* xp = x + plane * s;
    const float* gp = dy + plane * s;
    float* dp = dx + plane * s;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < s;
         k += (long long)gridDim.x * blockDim.x) {
        dp[k] = a * gp[k] + b * (xp[k] - centre) + cc;
    }
}

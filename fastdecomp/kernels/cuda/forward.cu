// Forward kernels of the device engine.
//
// One thread per output value; each sums its terms in the same order, with
// the same roundings, as the CPU kernels (fastdecomp/kernels/direct_conv.py
// and cpu.py), so an image's values are bit-identical on either backend.
// Compile with --fmad=false: only the explicit fmaf() calls may fuse.
// No thread reads what another writes (no shared memory, no atomics).

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

extern "C" __global__ void conv2d_forward(
    const float* __restrict__ x, const float* __restrict__ kernel, const float* __restrict__ bias,
    float* out, const float* residual, long long n, int h, int w, int ci, int kh, int kw, int stride_h,
    int stride_w, int pad_top, int pad_left, int oh, int ow, int co, int add_residual, int rectify,
    float cap, int capped)
{
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * oh * ow * co) return;
    NhwcIndex at = nhwc_index(t, oh, ow, co);
    long long b = at.b;
    int i = at.i, j = at.j, o = at.ch;
    float acc = 0.0f;
    for (int c = 0; c < ci; ++c) {
        for (int dy = 0; dy < kh; ++dy) {
            int y = i * stride_h + dy - pad_top;
            for (int dx = 0; dx < kw; ++dx) {
                int xx = j * stride_w + dx - pad_left;
                float v = (y >= 0 && y < h && xx >= 0 && xx < w) ? x[((b * h + y) * w + xx) * ci + c] : 0.0f;
                acc = fmaf(v, kernel[((long long)(dy * kw + dx) * ci + c) * co + o], acc);
            }
        }
    }
    float r = acc + bias[o];
    if (add_residual) r = r + residual[t];  /* residual may be out itself: read before written */
    if (rectify) r = r > 0.0f ? r : 0.0f;
    if (capped) r = r < cap ? r : cap;
    out[t] = r;
}

// Twin of cpu.grouped_conv2d_forward: the group's channels, then rows, then columns; padding skipped.
extern "C" __global__ void grouped_conv2d_forward(
    const float* __restrict__ x, const float* __restrict__ kernel, const float* __restrict__ bias,
    float* __restrict__ out, long long n, int h, int w, int ci, int kh, int kw, int group_ci, int co,
    int groups, int stride_h, int stride_w, int dilation_h, int dilation_w, int pad_top, int pad_left,
    int oh, int ow)
{
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * oh * ow * co) return;
    NhwcIndex at = nhwc_index(t, oh, ow, co);
    long long b = at.b;
    int i = at.i, j = at.j, o = at.ch;
    int first = (o / (co / groups)) * group_ci;
    float acc = 0.0f;
    for (int c = 0; c < group_ci; ++c) {
        for (int dy = 0; dy < kh; ++dy) {
            int y = i * stride_h + dy * dilation_h - pad_top;
            if (y < 0 || y >= h) continue;
            for (int dx = 0; dx < kw; ++dx) {
                int xx = j * stride_w + dx * dilation_w - pad_left;
                if (xx < 0 || xx >= w) continue;
                acc = acc + x[((b * h + y) * w + xx) * ci + first + c] * kernel[((long long)(dy * kw + dx) * group_ci + c) * co + o];
            }
        }
    }
    out[t] = acc + bias[o];
}

extern "C" __global__ void dense_forward(
    const float* __restrict__ x, const float* __restrict__ kernel, const float* __restrict__ bias,
    float* __restrict__ out, long long n, long long features, int units)
{
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * units) return;
    int o = (int)(t % units);
    long long b = t / units;
    float acc = 0.0f;
    for (long long i = 0; i < features; ++i) acc = acc + x[b * features + i] * kernel[i * units + o];
    out[t] = acc + bias[o];
}

extern "C" __global__ void pool2d_forward(
    const float* __restrict__ x, float* __restrict__ out, long long n, int h, int w, int c,
    int pool_h, int pool_w, int stride_h, int stride_w, int pad_top, int pad_left, int oh, int ow,
    int is_max)
{
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * oh * ow * c) return;
    NhwcIndex at = nhwc_index(t, oh, ow, c);
    long long b = at.b;
    int i = at.i, j = at.j, ch = at.ch;
    float acc = is_max ? -INFINITY : 0.0f;
    int count = 0;
    for (int dy = 0; dy < pool_h; ++dy) {
        int y = i * stride_h + dy - pad_top;
        if (y < 0 || y >= h) continue;
        for (int dx = 0; dx < pool_w; ++dx) {
            int xx = j * stride_w + dx - pad_left;
            if (xx < 0 || xx >= w) continue;
            float v = x[((b * h + y) * w + xx) * c + ch];
            if (is_max) {
                if (v > acc) acc = v;
            } else {
                acc = acc + v;
            }
            ++count;
        }
    }
    out[t] = is_max ? acc : acc / (float)count;
}

extern "C" __global__ void global_average_pool_forward(
    const float* __restrict__ x, float* __restrict__ out, long long n, int h, int w, int c)
{
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * c) return;
    int ch = (int)(t % c);
    long long b = t / c;
    float acc = 0.0f;
    for (int y = 0; y < h; ++y)
        for (int xx = 0; xx < w; ++xx) acc = acc + x[((b * h + y) * w + xx) * c + ch];
    out[t] = acc / (float)(h * w);
}

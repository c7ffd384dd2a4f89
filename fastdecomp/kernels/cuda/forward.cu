// Forward kernels of the device engine.
//
// Each output value is summed by one thread, in the same order, with
// the same roundings, as the CPU kernels (fastdecomp/kernels/direct_conv.py
// and cpu.py), so an image's values are bit-identical on either backend.
// Compile with --fmad=false: only the explicit fmaf() calls may fuse.
// No thread reads what another writes (no shared memory, no atomics).

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// conv2d_forward: register tiling. Each thread computes CONV_PIXELS consecutive output pixels of one row
// times CONV_CHANNELS consecutive output channels (32 sums in registers), so each input value it loads
// serves CONV_CHANNELS sums and each weight CONV_PIXELS. Every sum still takes its terms one at a time in
// the CPU's order (input channel, kernel row, kernel column; fmaf), taps on padding left out as the CPU
// leaves them out, then the bias and the residual: the values are the CPU's bit for bit. The lanes of a
// warp take neighbouring channel groups first, so they read the same input values and adjacent weights.
#ifndef CONV_PIXELS  // overridden only by bench/gpu_check.py's kernel step, which times other tiles
#define CONV_PIXELS 4
#endif
#define CONV_CHANNELS 8  // also one byte of packed activity: a thread owns whole bytes

struct ConvTile {
    long long b;
    int i, j0, o0;
};

__device__ __forceinline__ float4 load4(const float* p)
{
    return *reinterpret_cast<const float4*>(p);
}

__device__ __forceinline__ float lane(float4 v, int k)
{
    return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
}

// acc[p][q] += v[p] * w[q] for the pixels whose tap is inside the input, one fmaf per sum.
__device__ __forceinline__ void tap(float (&acc)[CONV_PIXELS][CONV_CHANNELS], const float (&v)[CONV_PIXELS],
                                    const bool (&inside)[CONV_PIXELS], float4 w0, float4 w1)
{
#pragma unroll
    for (int p = 0; p < CONV_PIXELS; ++p) {
        if (!inside[p]) continue;
        acc[p][0] = fmaf(v[p], w0.x, acc[p][0]);
        acc[p][1] = fmaf(v[p], w0.y, acc[p][1]);
        acc[p][2] = fmaf(v[p], w0.z, acc[p][2]);
        acc[p][3] = fmaf(v[p], w0.w, acc[p][3]);
        acc[p][4] = fmaf(v[p], w1.x, acc[p][4]);
        acc[p][5] = fmaf(v[p], w1.y, acc[p][5]);
        acc[p][6] = fmaf(v[p], w1.z, acc[p][6]);
        acc[p][7] = fmaf(v[p], w1.w, acc[p][7]);
    }
}

// 3x3, stride 1, ci % 4 == 0, co % 8 == 0, 16-byte aligned: four input channels per float4 load, the
// 3 x (CONV_PIXELS + 2) window of each kept in registers and used by every tap that covers it.
__device__ __forceinline__ void conv_3x3_vector(const float* __restrict__ x, const float* __restrict__ kernel,
                                                ConvTile at, int h, int w, int ci, int co, int pad_top,
                                                int pad_left, float (&acc)[CONV_PIXELS][CONV_CHANNELS])
{
    const int cols = CONV_PIXELS + 2;
    bool row_in[3], col_in[cols];
    long long row_at[3];
#pragma unroll
    for (int dy = 0; dy < 3; ++dy) {
        int y = at.i + dy - pad_top;
        row_in[dy] = y >= 0 && y < h;
        row_at[dy] = ((at.b * h + y) * w + (at.j0 - pad_left)) * (long long)ci;
    }
#pragma unroll
    for (int cx = 0; cx < cols; ++cx) col_in[cx] = at.j0 + cx - pad_left >= 0 && at.j0 + cx - pad_left < w;
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int c = 0; c < ci; c += 4) {
        float4 window[3][cols];
#pragma unroll
        for (int dy = 0; dy < 3; ++dy)
#pragma unroll
            for (int cx = 0; cx < cols; ++cx)
                window[dy][cx] = row_in[dy] && col_in[cx] ? load4(x + row_at[dy] + (long long)cx * ci + c) : zero;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
#pragma unroll
            for (int dy = 0; dy < 3; ++dy) {
                if (!row_in[dy]) continue;
#pragma unroll
                for (int dx = 0; dx < 3; ++dx) {
                    const float* wp = kernel + ((long long)(dy * 3 + dx) * ci + c + k) * co + at.o0;
                    float v[CONV_PIXELS];
                    bool inside[CONV_PIXELS];
#pragma unroll
                    for (int p = 0; p < CONV_PIXELS; ++p) {
                        v[p] = lane(window[dy][p + dx], k);
                        inside[p] = col_in[p + dx];
                    }
                    tap(acc, v, inside, load4(wp), load4(wp + 4));
                }
            }
        }
    }
}

// 1x1, any stride, ci % 4 == 0, co % 8 == 0, 16-byte aligned: four input channels per float4 load.
__device__ __forceinline__ void conv_1x1_vector(const float* __restrict__ x, const float* __restrict__ kernel,
                                                ConvTile at, int h, int w, int ci, int co, int stride_h,
                                                int stride_w, int pad_top, int pad_left,
                                                float (&acc)[CONV_PIXELS][CONV_CHANNELS])
{
    int y = at.i * stride_h - pad_top;
    bool inside[CONV_PIXELS];
    long long pixel_at[CONV_PIXELS];
#pragma unroll
    for (int p = 0; p < CONV_PIXELS; ++p) {
        int xx = (at.j0 + p) * stride_w - pad_left;
        inside[p] = y >= 0 && y < h && xx >= 0 && xx < w;
        pixel_at[p] = inside[p] ? ((at.b * h + y) * w + xx) * (long long)ci : 0;
    }
    for (int c = 0; c < ci; c += 4) {
        float4 pixels[CONV_PIXELS];
#pragma unroll
        for (int p = 0; p < CONV_PIXELS; ++p) pixels[p] = load4(x + pixel_at[p] + c);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const float* wp = kernel + (long long)(c + k) * co + at.o0;
            float v[CONV_PIXELS];
#pragma unroll
            for (int p = 0; p < CONV_PIXELS; ++p) v[p] = lane(pixels[p], k);
            tap(acc, v, inside, load4(wp), load4(wp + 4));
        }
    }
}

// Any window, stride and channel count: scalar loads; weights past co read as zero (those sums are not kept).
__device__ __forceinline__ void conv_any(const float* __restrict__ x, const float* __restrict__ kernel, ConvTile at,
                                         int h, int w, int ci, int kh, int kw, int stride_h, int stride_w,
                                         int pad_top, int pad_left, int co, float (&acc)[CONV_PIXELS][CONV_CHANNELS])
{
    for (int c = 0; c < ci; ++c) {
        for (int dy = 0; dy < kh; ++dy) {
            int y = at.i * stride_h + dy - pad_top;
            if (y < 0 || y >= h) continue;
            for (int dx = 0; dx < kw; ++dx) {
                const float* wp = kernel + ((long long)(dy * kw + dx) * ci + c) * co;
                float wq[CONV_CHANNELS];
#pragma unroll
                for (int q = 0; q < CONV_CHANNELS; ++q) wq[q] = at.o0 + q < co ? wp[at.o0 + q] : 0.0f;
                float v[CONV_PIXELS];
                bool inside[CONV_PIXELS];
#pragma unroll
                for (int p = 0; p < CONV_PIXELS; ++p) {
                    int xx = (at.j0 + p) * stride_w + dx - pad_left;
                    inside[p] = xx >= 0 && xx < w;
                    v[p] = inside[p] ? x[((at.b * h + y) * w + xx) * ci + c] : 0.0f;
                }
                tap(acc, v, inside, make_float4(wq[0], wq[1], wq[2], wq[3]), make_float4(wq[4], wq[5], wq[6], wq[7]));
            }
        }
    }
}

__device__ __forceinline__ bool aligned16(const void* p)
{
    return ((unsigned long long)p & 15ull) == 0;
}

// Thread count: n * oh * ceil(ow / CONV_PIXELS) * ceil(co / CONV_CHANNELS). activity, when written (co % 8
// == 0), gets each output's > 0 bit, packed big-endian over the image's nodes (numpy.packbits).
// Two blocks of 256 threads (gpu.BLOCK) per multiprocessor hold the registers to 128 a thread: 8-24% faster
// than the 148 the compiler takes unbounded (H200, bench/results/gpu.md).
#ifndef CONV_MIN_BLOCKS
#define CONV_MIN_BLOCKS 2
#endif

extern "C" __global__ void __launch_bounds__(256, CONV_MIN_BLOCKS) conv2d_forward(
    const float* __restrict__ x, const float* __restrict__ kernel, const float* __restrict__ bias,
    float* out, const float* residual, unsigned char* __restrict__ activity, long long n, int h, int w, int ci,
    int kh, int kw, int stride_h, int stride_w, int pad_top, int pad_left, int oh, int ow, int co,
    int add_residual, int rectify, float cap, int capped, int write_activity)
{
    int groups = (co + CONV_CHANNELS - 1) / CONV_CHANNELS, tiles = (ow + CONV_PIXELS - 1) / CONV_PIXELS;
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * oh * tiles * groups) return;
    ConvTile at;
    at.o0 = (int)(t % groups) * CONV_CHANNELS;
    long long rest = t / groups;
    at.j0 = (int)(rest % tiles) * CONV_PIXELS;
    rest /= tiles;
    at.i = (int)(rest % oh);
    at.b = rest / oh;
    float acc[CONV_PIXELS][CONV_CHANNELS];
#pragma unroll
    for (int p = 0; p < CONV_PIXELS; ++p)
#pragma unroll
        for (int q = 0; q < CONV_CHANNELS; ++q) acc[p][q] = 0.0f;
    bool vector = ci % 4 == 0 && co % CONV_CHANNELS == 0 && aligned16(x) && aligned16(kernel);
    if (vector && kh == 3 && kw == 3 && stride_h == 1 && stride_w == 1)
        conv_3x3_vector(x, kernel, at, h, w, ci, co, pad_top, pad_left, acc);
    else if (vector && kh == 1 && kw == 1)
        conv_1x1_vector(x, kernel, at, h, w, ci, co, stride_h, stride_w, pad_top, pad_left, acc);
    else
        conv_any(x, kernel, at, h, w, ci, kh, kw, stride_h, stride_w, pad_top, pad_left, co, acc);
#pragma unroll
    for (int p = 0; p < CONV_PIXELS; ++p) {
        if (at.j0 + p >= ow) break;
        long long first = ((at.b * oh + at.i) * ow + at.j0 + p) * co + at.o0;
        unsigned int bits = 0;
#pragma unroll
        for (int q = 0; q < CONV_CHANNELS; ++q) {
            if (at.o0 + q >= co) break;
            float r = acc[p][q] + bias[at.o0 + q];
            if (add_residual) r = r + residual[first + q];  /* residual may be out itself: read before written */
            if (rectify) r = r <= 0.0f ? 0.0f : r;  /* a NaN is kept, as numpy.maximum(r, 0) keeps it */
            if (capped) r = r > cap ? cap : r;
            out[first + q] = r;
            if (r > 0.0f) bits |= 128u >> q;
        }
        if (write_activity) activity[first / CONV_CHANNELS] = (unsigned char)bits;
    }
}

// Twin of cpu.grouped_conv2d_forward: the group's channels, then rows, then columns; padding skipped; one
// rounded multiply and add at a time. A depthwise convolution (one input channel a group, one output channel
// a group) takes a register tile of DEPTHWISE_PIXELS pixels x 4 channels a thread: a window tap's 4 weights
// serve every pixel, and the 4 channels of an input pixel come in one float4 where the channels allow.
#define DEPTHWISE_PIXELS 4

__device__ __forceinline__ void depthwise_tile(
    const float* __restrict__ x, const float* __restrict__ kernel, const float* __restrict__ bias,
    float* __restrict__ out, long long t, long long n, int h, int w, int co, int kh, int kw, int stride_h,
    int stride_w, int dilation_h, int dilation_w, int pad_top, int pad_left, int oh, int ow)
{
    int groups4 = (co + 3) / 4, tiles = (ow + DEPTHWISE_PIXELS - 1) / DEPTHWISE_PIXELS;
    if (t >= n * oh * tiles * groups4) return;
    int o0 = (int)(t % groups4) * 4;
    long long rest = t / groups4;
    int j0 = (int)(rest % tiles) * DEPTHWISE_PIXELS;
    rest /= tiles;
    int i = (int)(rest % oh);
    long long b = rest / oh;
    bool vector = co % 4 == 0 && ((unsigned long long)x & 15ull) == 0 && ((unsigned long long)kernel & 15ull) == 0;
    float acc[DEPTHWISE_PIXELS][4];
#pragma unroll
    for (int p = 0; p < DEPTHWISE_PIXELS; ++p)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[p][q] = 0.0f;
    for (int dy = 0; dy < kh; ++dy) {
        int y = i * stride_h + dy * dilation_h - pad_top;
        if (y < 0 || y >= h) continue;
        for (int dx = 0; dx < kw; ++dx) {
            const float* wp = kernel + (long long)(dy * kw + dx) * co + o0;
            float4 k4 = vector ? load4(wp) : make_float4(wp[0], o0 + 1 < co ? wp[1] : 0.0f,
                                                         o0 + 2 < co ? wp[2] : 0.0f, o0 + 3 < co ? wp[3] : 0.0f);
#pragma unroll
            for (int p = 0; p < DEPTHWISE_PIXELS; ++p) {
                int xx = (j0 + p) * stride_w + dx * dilation_w - pad_left;
                if (xx < 0 || xx >= w) continue;
                const float* xp = x + ((b * h + y) * w + xx) * co + o0;
                float4 v = vector ? load4(xp) : make_float4(xp[0], o0 + 1 < co ? xp[1] : 0.0f,
                                                            o0 + 2 < co ? xp[2] : 0.0f, o0 + 3 < co ? xp[3] : 0.0f);
                acc[p][0] = acc[p][0] + v.x * k4.x;
                acc[p][1] = acc[p][1] + v.y * k4.y;
                acc[p][2] = acc[p][2] + v.z * k4.z;
                acc[p][3] = acc[p][3] + v.w * k4.w;
            }
        }
    }
#pragma unroll
    for (int p = 0; p < DEPTHWISE_PIXELS; ++p) {
        if (j0 + p >= ow) break;
        long long first = ((b * oh + i) * ow + j0 + p) * co + o0;
#pragma unroll
        for (int q = 0; q < 4; ++q)
            if (o0 + q < co) out[first + q] = acc[p][q] + bias[o0 + q];
    }
}

// Threads: one per output value, or for a depthwise convolution (group_ci == 1, co == groups)
// n * oh * ceil(ow / DEPTHWISE_PIXELS) * ceil(co / 4).
extern "C" __global__ void grouped_conv2d_forward(
    const float* __restrict__ x, const float* __restrict__ kernel, const float* __restrict__ bias,
    float* __restrict__ out, long long n, int h, int w, int ci, int kh, int kw, int group_ci, int co,
    int groups, int stride_h, int stride_w, int dilation_h, int dilation_w, int pad_top, int pad_left,
    int oh, int ow)
{
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (group_ci == 1 && co == groups) {
        depthwise_tile(x, kernel, bias, out, t, n, h, w, co, kh, kw, stride_h, stride_w, dilation_h, dilation_w,
                       pad_top, pad_left, oh, ow);
        return;
    }
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

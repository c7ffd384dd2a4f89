// Backward dead-node propagation through sliding windows, for many modules at once.
// One thread per input node of one module; see cpu.window_dead_inputs.

extern "C" __global__ void window_dead_inputs(
    const unsigned char* __restrict__ dead_out, unsigned char* __restrict__ dead_in, int modules,
    int oh, int ow, int c, int in_h, int in_w, int window_h, int window_w, int stride_h, int stride_w,
    int pad_top, int pad_left, int dilation_h, int dilation_w)
{
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)modules * in_h * in_w * c) return;
    NhwcIndex at = nhwc_index(t, in_h, in_w, c);
    long long m = at.b;
    int h = at.i, w = at.j, ch = at.ch;
    unsigned char dead = 1;
    for (int dy = 0; dy < window_h && dead; ++dy) {
        int num_y = h + pad_top - dy * dilation_h;
        if (num_y < 0 || num_y % stride_h) continue;
        int i = num_y / stride_h;
        if (i >= oh) continue;
        for (int dx = 0; dx < window_w; ++dx) {
            int num_x = w + pad_left - dx * dilation_w;
            if (num_x < 0 || num_x % stride_w) continue;
            int j = num_x / stride_w;
            if (j < ow && !dead_out[((m * oh + i) * ow + j) * c + ch]) {
                dead = 0;
                break;
            }
        }
    }
    dead_in[t] = dead;
}

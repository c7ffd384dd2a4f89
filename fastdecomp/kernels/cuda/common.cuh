// Shared by every kernel file: fastdecomp.kernels.gpu.source() puts it in front of each.

// Thread t's place in an NHWC array [n, h, w, c]: one thread per element, channel fastest.
struct NhwcIndex {
    long long b;
    int i, j, ch;
};

__device__ NhwcIndex nhwc_index(long long t, int h, int w, int c)
{
    NhwcIndex at;
    at.ch = (int)(t % c);
    long long p = t / c;
    at.j = (int)(p % w);
    p /= w;
    at.i = (int)(p % h);
    at.b = p / h;
    return at;
}

// Activity statistics and tangling identification on the device.
//
// RANK_T is the integer type of the first-rank table (unsigned char, short or
// int), chosen per decomposition like the CPU's dtype; the module is compiled
// once per RANK_T. One thread owns one byte of bit-packed nodes (eight nodes)
// for every class, or one node for every module, so no two threads write the
// same memory and no atomics are needed: results do not depend on scheduling.

#ifndef RANK_T
#define RANK_T unsigned char
#endif

// One image's activity byte (eight nodes, bit 7 first) into its class's concerned byte and first ranks.
__device__ void fold_byte(unsigned int bits, long long k, long long c, long long r, unsigned char* active,
                          long long nbytes, RANK_T* first_rank, long long rank_stride)
{
    if (k >= 0) active[k * nbytes] |= (unsigned char)bits;
    if (c < 0 || !bits) return;
    RANK_T* ranks = first_rank + c * rank_stride;
    for (int bit = 0; bit < 8; ++bit)
        if ((bits & (128u >> bit)) && r < (long long)ranks[bit]) ranks[bit] = (RANK_T)r;
}

extern "C" __global__ void accumulate_activity(
    const float* __restrict__ values, long long n, long long nodes,
    const long long* __restrict__ concerned_class, const long long* __restrict__ tangle_class,
    const long long* __restrict__ tangle_rank, unsigned char* __restrict__ active,
    RANK_T* __restrict__ first_rank, long long rank_stride, unsigned char* __restrict__ packed,
    int keep_bits)
{
    long long byte = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long nbytes = (nodes + 7) / 8;
    if (byte >= nbytes) return;
    for (long long b = 0; b < n; ++b) {
        const float* v = values + b * nodes;
        unsigned int bits = 0;
        for (int bit = 0; bit < 8; ++bit) {
            long long node = byte * 8 + bit;
            if (node < nodes && v[node] > 0.0f) bits |= 128u >> bit;
        }
        if (keep_bits) packed[b * nbytes + byte] = (unsigned char)bits;
        fold_byte(bits, concerned_class[b], tangle_class[b], tangle_rank[b], active + byte, nbytes,
                  first_rank + byte * 8, rank_stride);
    }
}

extern "C" __global__ void accumulate_concerned(
    const unsigned char* __restrict__ bits, long long n, long long nbytes,
    const long long* __restrict__ concerned_class, unsigned char* __restrict__ active)
{
    long long byte = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (byte >= nbytes) return;
    for (long long b = 0; b < n; ++b) {
        long long k = concerned_class[b];
        if (k >= 0) active[k * nbytes + byte] |= bits[b * nbytes + byte];
    }
}

// accumulate_activity for activity already packed (numpy.packbits of values > 0).
extern "C" __global__ void accumulate_packed_activity(
    const unsigned char* __restrict__ bits, long long n, long long nbytes,
    const long long* __restrict__ concerned_class, const long long* __restrict__ tangle_class,
    const long long* __restrict__ tangle_rank, unsigned char* __restrict__ active,
    RANK_T* __restrict__ first_rank, long long rank_stride)
{
    long long byte = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (byte >= nbytes) return;
    for (long long b = 0; b < n; ++b) {
        fold_byte(bits[b * nbytes + byte], concerned_class[b], tangle_class[b], tangle_rank[b], active + byte,
                  nbytes, first_rank + byte * 8, rank_stride);
    }
}

// reach[(c * most + r) * words + w]: bit m of word w is set when module m's
// unconcerned sample takes class c's input of rank r.
extern "C" __global__ void tangling_keep(
    const RANK_T* __restrict__ first_rank, long long rank_stride, int classes,
    const unsigned long long* __restrict__ reach, int most, int words, int modules, long long nodes,
    unsigned char* __restrict__ keep)
{
    long long node = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (node >= nodes) return;
    for (int word = 0; word < words; ++word) {
        unsigned long long set = 0;
        for (int c = 0; c < classes; ++c) {
            long long r = first_rank[c * rank_stride + node];
            if (r < most) set |= reach[((long long)c * most + r) * words + word];
        }
        for (int bit = 0; bit < 64; ++bit) {
            int m = word * 64 + bit;
            if (m < modules && ((set >> bit) & 1ull)) keep[(long long)m * nodes + node] = 1;
        }
    }
}

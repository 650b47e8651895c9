// FP32 peak: kChains independent accumulator chains acc = acc * m + a, each one
// native SIMD register wide. A chain can issue one FMA every `latency` cycles, so
// filling `pipes` FMA units needs latency x pipes chains in flight: 4 x 2 = 8 on
// Zen 4 and Skylake-X, 5 x 2 = 10 on Haswell. Twelve covers all of them and still
// fits the register file (16 ymm on AVX2, 32 zmm on AVX-512).
//
// Unlike the GEMM, which compiles one 64-byte-vector body per instruction set with
// target_clones, the vector width here must follow the instruction set: twelve
// 64-byte chains would need 24 ymm registers on AVX2 and spill. So each width is its
// own function with a target attribute, and the choice uses the same CPU tests the
// target_clones resolver applies (see cpu_info.cpp), so a build never runs an
// instruction the CPU lacks.
//
// The compiler cannot drop or shorten the work: m and a arrive at run time, IEEE
// rules forbid reassociating the chains (no -ffast-math), and every call's result
// is stored to a volatile.
#include "convx/fp32_peak.h"

#include <omp.h>

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace convx {
namespace {

constexpr int kChains = 12;
// One call runs kChains x kStepsPerCall vector FMAs: ~0.1-1 ms, short enough for
// an accurate stop, long enough that the clock read costs nothing.
constexpr int64_t kStepsPerCall = 1 << 14;

// One native register of floats: xmm, ymm or zmm. (GCC wants a literal vector_size,
// hence one specialization per width.)
template <int Bytes>
struct FloatVec;
template <>
struct FloatVec<16> {
  typedef float type __attribute__((vector_size(16)));
};
template <>
struct FloatVec<32> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct FloatVec<64> {
  typedef float type __attribute__((vector_size(64)));
};

template <int Bytes>
__attribute__((always_inline)) inline float fma_chains(float m, float a) {
  typedef typename FloatVec<Bytes>::type V;
  constexpr int lanes = Bytes / sizeof(float);
  V acc[kChains];
  // Distinct starting values, so no two chains are provably equal and merged.
  for (int c = 0; c < kChains; ++c)
    for (int l = 0; l < lanes; ++l) acc[c][l] = 1.0f + 0.001f * static_cast<float>(c * lanes + l);
  const V vm = V{} + m, va = V{} + a;
  for (int64_t step = 0; step < kStepsPerCall; ++step)
    for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * vm + va;  // contracted to one FMA
  V total = V{};
  for (int c = 0; c < kChains; ++c) total += acc[c];
  float sum = 0.0f;
  for (int l = 0; l < lanes; ++l) sum += total[l];
  return sum;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target("arch=x86-64-v4"))) float fma_chains_avx512(float m, float a) {
  return fma_chains<64>(m, a);
}
__attribute__((target("arch=x86-64-v3"))) float fma_chains_avx2(float m, float a) {
  return fma_chains<32>(m, a);
}
#endif
// Baseline x86-64 has SSE2 but no FMA: a multiply and an add, still 2 FLOP.
float fma_chains_baseline(float m, float a) { return fma_chains<16>(m, a); }

struct Loop {
  float (*fn)(float, float);
  int lanes;
  const char* simd;
};

Loop pick_loop() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return {fma_chains_avx512, 16, "avx512"};
  if (__builtin_cpu_supports("x86-64-v3")) return {fma_chains_avx2, 8, "avx2"};
#endif
  return {fma_chains_baseline, 4, "scalar"};
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Fp32PeakResult measure_fp32_peak_cpu(double seconds, int threads) {
  if (!(seconds > 0.0 && seconds <= 60.0))
    throw std::invalid_argument("seconds must be in (0, 60], got " + std::to_string(seconds));
  if (threads <= 0) threads = omp_get_max_threads();
  const Loop loop = pick_loop();
  // Below 1 the steady state a / (1 - m) is a normal number: no overflow, no denormals.
  const float m = 0.999f, a = 0.001f;
  // Clocks ramp up under load: run a little before timing.
  const double warmup = seconds < 0.5 ? seconds / 4 : 0.1;
  int64_t total_calls = 0;
  double start = 0.0, stop = 0.0;
  int team = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total_calls)
  {
    volatile float sink = 0.0f;
    const double warm_until = now() + warmup;
    while (now() < warm_until) sink = loop.fn(m, a);
#pragma omp barrier
#pragma omp single
    {
      team = omp_get_num_threads();
      start = now();
    }  // implicit barrier: every thread starts the timed part together
    const double until = start + seconds;
    int64_t calls = 0;
    while (now() < until) {
      sink = loop.fn(m, a);
      ++calls;
    }
    total_calls += calls;
#pragma omp barrier
#pragma omp single
    stop = now();
    (void)sink;
  }
  const double flops = static_cast<double>(total_calls) * kStepsPerCall * kChains * loop.lanes * 2.0;
  return {flops / (stop - start), stop - start, team, loop.simd};
}

}  // namespace convx

// The machine's measured single-precision FMA peak: the yardstick the benchmark
// suite reports "% of peak" against.
#pragma once
#include <string>

namespace convx {

struct Fp32PeakResult {
  double flops_per_second;  // FP32 FLOP/s summed over all threads (an FMA counts as 2)
  double seconds;           // wall time of the timed part
  int threads;              // OpenMP threads that ran the loop
  std::string simd;         // instruction set of the loop: "avx512", "avx2" or "scalar"
};

// Runs independent chains of vector FMAs (enough to cover FMA latency x the number
// of FMA pipes) on `threads` OpenMP threads (<= 0: all) for about `seconds` after a
// short warm-up, and returns the FLOP rate. Nothing but registers is touched, so the
// rate is the arithmetic ceiling no kernel can beat on this CPU.
Fp32PeakResult measure_fp32_peak_cpu(double seconds, int threads);

}  // namespace convx

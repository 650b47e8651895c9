// The CPU GEMM linked alone, without Python: times gemm_cpu<float> on one
// product shape over several B operands in turn (as a 1x1 layer's forward runs
// one product per image), and checks the first against the reference kernel.
// For trying a change to csrc/cpu/gemm_cpu.cpp (edit a copy, build both,
// alternate the two binaries: this machine class drifts between fast and slow
// stretches, so only runs side by side compare) and for `perf record`, which
// sees its symbols (the extension module is stripped).
//
// From the repository root:
//   g++ -O3 -g -fopenmp -std=c++17 -Icsrc -o gemm_harness benchmarks/gemm_harness.cpp
//       csrc/cpu/gemm_cpu.cpp csrc/cpu/workspace_cpu.cpp csrc/cpu/cpu_info.cpp
//   ./gemm_harness M N K [operands=8] [seconds=2] [peak_gflops=0]
//
// Prints the median and best time per product and, given the measured FP32
// peak (`convx bench` reports it), their share of it. One thread.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "convx/gemm.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s M N K [operands=8] [seconds=2] [peak_gflops=0]\n", argv[0]);
    return 2;
  }
  const long M = std::atol(argv[1]), N = std::atol(argv[2]), K = std::atol(argv[3]);
  const long operands = argc > 4 ? std::atol(argv[4]) : 8;
  const double seconds = argc > 5 ? std::atof(argv[5]) : 2.0, peak = argc > 6 ? std::atof(argv[6]) : 0.0;
  if (M <= 0 || N <= 0 || K <= 0 || operands <= 0 || seconds <= 0) {
    std::fprintf(stderr, "M, N, K, operands and seconds must be positive\n");
    return 2;
  }
  omp_set_num_threads(1);
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  std::vector<float> A(M * K), B(operands * K * N), C(operands * M * N), R(M * N);
  for (float& x : A) x = uniform(rng);
  for (float& x : B) x = uniform(rng);
  const auto run_all = [&] {
    for (long i = 0; i < operands; ++i)
      convx::gemm_cpu<float>(false, false, M, N, K, A.data(), K, B.data() + i * K * N, N, 0.f,
                             C.data() + i * M * N, N);
  };
  run_all();
  convx::gemm_reference_cpu<float>(false, false, M, N, K, A.data(), K, B.data(), N, 0.f, R.data(), N);
  double err = 0, scale = 0;
  for (long i = 0; i < M * N; ++i) {
    err = std::max(err, double(std::abs(R[i] - C[i])));
    scale = std::max(scale, double(std::abs(R[i])));
  }
  if (err > 1e-5 * std::max(scale, 1.0) * std::sqrt(double(K))) {
    std::printf("WRONG: max |C - reference| = %g\n", err);
    return 1;
  }
  std::vector<double> per_product;
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end || per_product.size() < 3) {
    const auto t0 = std::chrono::steady_clock::now();
    run_all();
    per_product.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / operands);
  }
  std::sort(per_product.begin(), per_product.end());
  const double median = per_product[per_product.size() / 2], best = per_product.front();
  const double flop = 2.0 * M * N * K;
  std::printf("%ldx%ldx%ld: median %.3f ms (%.1f GFLOP/s), best %.3f ms (%.1f GFLOP/s)", M, N, K, median * 1e3,
              flop / median / 1e9, best * 1e3, flop / best / 1e9);
  if (peak > 0)
    std::printf("; %.0f%% / %.0f%% of %.0f", flop / median / 1e9 / peak * 100, flop / best / 1e9 / peak * 100, peak);
  std::printf("\n");
  return 0;
}

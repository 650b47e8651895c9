// Runs the SIMD kernels on whatever CPU executes it and checks them against the
// readable references. scripts/check_simd_dispatch.sh runs it under qemu as a
// baseline x86-64, an AVX2 and the native CPU: each must pick its own clone,
// never execute an instruction that CPU lacks, and give the reference's answer.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "convx/conv2d.h"
#include "convx/cpu_info.h"
#include "convx/gemm.h"

template <typename T>
double max_abs_diff(const std::vector<T>& a, const std::vector<T>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::fmax(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

template <typename T>
bool check(const char* dtype, double tol) {
  std::mt19937 gen(7);
  std::normal_distribution<double> normal;
  auto fill = [&](std::vector<T>& v) { for (auto& x : v) x = T(normal(gen)); };
  bool ok = true;

  // GEMM with edge tiles in every dimension and both transposes.
  const int64_t M = 37, N = 45, K = 300;
  std::vector<T> a(M * K), b(K * N), fast(M * N), ref(M * N);
  fill(a);
  fill(b);
  for (int t = 0; t < 4; ++t) {
    bool ta = t & 1, tb = t & 2;
    convx::gemm_cpu<T>(ta, tb, M, N, K, a.data(), ta ? M : K, b.data(), tb ? K : N, T(0), fast.data(), N);
    convx::gemm_reference_cpu<T>(ta, tb, M, N, K, a.data(), ta ? M : K, b.data(), tb ? K : N, T(0), ref.data(), N);
    double err = max_abs_diff(fast, ref);
    std::printf("%s gemm trans_a=%d trans_b=%d: max |fast - reference| = %.2e\n", dtype, ta, tb, err);
    ok = ok && err <= tol * K;
  }

  // conv2d forward, im2col + GEMM against the direct loops.
  convx::Conv2dParams p;
  p.N = 2; p.C = 6; p.H = 11; p.W = 9; p.K = 10; p.R = 3; p.S = 3;
  p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = 1;
  p.groups = 2;
  p.validate();
  std::vector<T> x(p.input_numel()), w(p.weight_numel()), bias(p.K), y1(p.output_numel()), y2(p.output_numel());
  fill(x);
  fill(w);
  fill(bias);
  convx::conv2d_forward_im2col_cpu<T>(p, x.data(), w.data(), bias.data(), y1.data());
  convx::conv2d_forward_direct_cpu<T>(p, x.data(), w.data(), bias.data(), y2.data());
  double err = max_abs_diff(y1, y2);
  std::printf("%s conv2d im2col vs direct: max |difference| = %.2e\n", dtype, err);
  return ok && err <= tol * 27;
}

int main() {
  std::printf("SIMD level: %s\n", convx::simd_level().c_str());
  bool ok = check<float>("float32", 1e-5) && check<double>("float64", 1e-13);
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}

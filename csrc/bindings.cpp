// The only file that knows about Python. Arrays cross as C-contiguous numpy
// buffers of exactly the kernel's dtype (noconvert: a wrong dtype or layout is a
// TypeError, never a silent copy the kernel would write into). Every entry point
// validates its params (which bounds every index the kernels compute) and checks
// each buffer's size against them before releasing the GIL, so a direct caller of
// convx._C gets an exception, not an out-of-bounds access.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <omp.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "convx/conv2d.h"
#include "convx/cpu_info.h"
#include "convx/fp32_peak.h"
#include "convx/workspace.h"
#include "convx/gemm.h"
#include "convx/im2col.h"
#include "convx/max_pool2d.h"
#include "convx/params.h"

#ifndef CONVX_VERSION
#define CONVX_VERSION "0.0.0"
#endif
#ifndef CONVX_BUILD_TYPE
#define CONVX_BUILD_TYPE "unknown"
#endif

namespace py = pybind11;
using namespace convx;

namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style>;

template <typename T>
void require_size(const Array<T>& a, int64_t expected, const char* name) {
  if (static_cast<int64_t>(a.size()) != expected)
    throw std::invalid_argument(std::string(name) + " has " + std::to_string(a.size()) +
                                " elements, expected " + std::to_string(expected));
  // numpy can hand over misaligned buffers (np.frombuffer with an offset).
  if (reinterpret_cast<std::uintptr_t>(a.data()) % alignof(T) != 0)
    throw std::invalid_argument(std::string(name) + " is not aligned to its dtype");
}

template <typename T>
std::string conv2d_forward(const Conv2dParams& p, const Array<T>& input, const Array<T>& weight,
                           const std::optional<Array<T>>& bias, Array<T>& output, const std::string& algo) {
  p.validate();
  Conv2dAlgo a = conv2d_algo_from_name(algo);
  require_size(input, p.input_numel(), "input");
  require_size(weight, p.weight_numel(), "weight");
  if (bias) require_size(*bias, p.K, "bias");
  require_size(output, p.output_numel(), "output");
  const T* b = bias ? bias->data() : nullptr;
  T* out = output.mutable_data();
  py::gil_scoped_release release;
  return conv2d_algo_name(conv2d_forward_cpu<T>(p, input.data(), weight.data(), b, out, a));
}

template <typename T>
std::string conv2d_backward_data(const Conv2dParams& p, const Array<T>& grad_output, const Array<T>& weight,
                                 Array<T>& grad_input, const std::string& algo) {
  p.validate();
  Conv2dAlgo a = conv2d_algo_from_name(algo);
  require_size(grad_output, p.output_numel(), "grad_output");
  require_size(weight, p.weight_numel(), "weight");
  require_size(grad_input, p.input_numel(), "grad_input");
  T* gin = grad_input.mutable_data();
  py::gil_scoped_release release;
  return conv2d_algo_name(conv2d_backward_data_cpu<T>(p, grad_output.data(), weight.data(), gin, a));
}

template <typename T>
std::string conv2d_backward_weight(const Conv2dParams& p, const Array<T>& grad_output, const Array<T>& input,
                                   Array<T>& grad_weight, const std::string& algo) {
  p.validate();
  Conv2dAlgo a = conv2d_algo_from_name(algo);
  require_size(grad_output, p.output_numel(), "grad_output");
  require_size(input, p.input_numel(), "input");
  require_size(grad_weight, p.weight_numel(), "grad_weight");
  T* gw = grad_weight.mutable_data();
  py::gil_scoped_release release;
  return conv2d_algo_name(conv2d_backward_weight_cpu<T>(p, grad_output.data(), input.data(), gw, a));
}

template <typename T>
void conv2d_backward_bias(const Conv2dParams& p, const Array<T>& grad_output, Array<T>& grad_bias) {
  p.validate();
  require_size(grad_output, p.output_numel(), "grad_output");
  require_size(grad_bias, p.K, "grad_bias");
  T* gb = grad_bias.mutable_data();
  py::gil_scoped_release release;
  conv2d_backward_bias_cpu<T>(p, grad_output.data(), gb);
}

// int32 indices only for planes whose flat offsets fit them.
template <typename Index>
void require_index_range(const Pool2dParams& p) {
  if (std::is_same<Index, int32_t>::value && p.H * p.W > 2147483647)
    throw std::invalid_argument("int32 indices need H*W < 2**31; H*W = " + std::to_string(p.H * p.W) +
                                ": pass int64 indices");
}

template <typename T, typename Index>
void max_pool2d_forward(const Pool2dParams& p, const Array<T>& input, Array<T>& output, Array<Index>& indices,
                        bool reference) {
  p.validate();
  require_index_range<Index>(p);
  require_size(input, p.input_numel(), "input");
  require_size(output, p.output_numel(), "output");
  require_size(indices, p.output_numel(), "indices");
  T* out = output.mutable_data();
  Index* idx = indices.mutable_data();
  py::gil_scoped_release release;
  if (reference)
    max_pool2d_forward_reference_cpu<T>(p, input.data(), out, idx);
  else
    max_pool2d_forward_cpu<T>(p, input.data(), out, idx);
}

template <typename T, typename Index>
void max_pool2d_backward(const Pool2dParams& p, const Array<T>& grad_output, const Array<Index>& indices,
                         Array<T>& grad_input) {
  p.validate();
  require_index_range<Index>(p);
  require_size(grad_output, p.output_numel(), "grad_output");
  require_size(indices, p.output_numel(), "indices");
  require_size(grad_input, p.input_numel(), "grad_input");
  T* gin = grad_input.mutable_data();
  bool ok;
  {
    py::gil_scoped_release release;
    ok = max_pool2d_backward_cpu<T>(p, grad_output.data(), indices.data(), gin);
  }
  if (!ok)
    throw std::invalid_argument("indices must lie in [0, H*W) = [0, " + std::to_string(p.H * p.W) +
                                ") of their plane");
}

// Batched im2col: input N x (C*H*W), output N x (C*kh*kw) x L.
template <typename T>
void im2col(const Im2colParams& p, int64_t N, const Array<T>& input, Array<T>& output) {
  p.validate();
  if (N < 0) throw std::invalid_argument("batch size must be non-negative, got " + std::to_string(N));
  const int64_t image = checked_product({p.C, p.H, p.W}, "image size");
  const int64_t cols = checked_mul(p.col_rows(), p.col_cols(), "column matrix size");
  require_size(input, checked_mul(N, image, "input size"), "input");
  require_size(output, checked_mul(N, cols, "output size"), "output");
  T* out = output.mutable_data();
  py::gil_scoped_release release;
  for (int64_t n = 0; n < N; ++n) im2col_cpu<T>(p, input.data() + n * image, out + n * cols);
}

// Batched col2im: input N x (C*kh*kw) x L, output N x (C*H*W).
template <typename T>
void col2im(const Im2colParams& p, int64_t N, const Array<T>& input, Array<T>& output) {
  p.validate();
  if (N < 0) throw std::invalid_argument("batch size must be non-negative, got " + std::to_string(N));
  const int64_t image = checked_product({p.C, p.H, p.W}, "image size");
  const int64_t cols = checked_mul(p.col_rows(), p.col_cols(), "column matrix size");
  require_size(input, checked_mul(N, cols, "input size"), "input");
  require_size(output, checked_mul(N, image, "output size"), "output");
  T* out = output.mutable_data();
  py::gil_scoped_release release;
  for (int64_t n = 0; n < N; ++n) col2im_cpu<T>(p, input.data() + n * cols, out + n * image);
}

// C = op(A) op(B) + beta*C on 2-D arrays; for testing and benchmarking the GEMM
// on its own. `reference` selects the triple loop.
template <typename T>
void gemm(const Array<T>& a, const Array<T>& b, Array<T>& c, bool trans_a, bool trans_b, double beta,
          bool reference) {
  if (a.ndim() != 2 || b.ndim() != 2 || c.ndim() != 2) throw std::invalid_argument("gemm takes 2-D arrays");
  if (beta != 0.0 && beta != 1.0) throw std::invalid_argument("beta must be 0 or 1, got " + std::to_string(beta));
  const int64_t M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
  const int64_t Kb = trans_b ? b.shape(1) : b.shape(0), N = trans_b ? b.shape(0) : b.shape(1);
  if (K != Kb || c.shape(0) != M || c.shape(1) != N)
    throw std::invalid_argument("gemm shapes do not agree: op(a) " + pair_str(M, K) + ", op(b) " +
                                pair_str(Kb, N) + ", c " + pair_str(c.shape(0), c.shape(1)));
  T* out = c.mutable_data();
  const T* A = a.data();
  const T* B = b.data();
  const int64_t lda = a.shape(1), ldb = b.shape(1);
  py::gil_scoped_release release;
  if (reference)
    gemm_reference_cpu<T>(trans_a, trans_b, M, N, K, A, lda, B, ldb, T(beta), out, N);
  else
    gemm_cpu<T>(trans_a, trans_b, M, N, K, A, lda, B, ldb, T(beta), out, N);
}

template <typename T>
void bind_typed(py::module_& m) {
  m.def("gemm", &gemm<T>, py::arg("a").noconvert(), py::arg("b").noconvert(), py::arg("c").noconvert(),
        py::arg("trans_a") = false, py::arg("trans_b") = false, py::arg("beta") = 0.0,
        py::arg("reference") = false);
  m.def("conv2d_forward", &conv2d_forward<T>, py::arg("params"), py::arg("input").noconvert(),
        py::arg("weight").noconvert(), py::arg("bias").noconvert(), py::arg("output").noconvert(),
        py::arg("algo") = "auto");
  m.def("conv2d_backward_data", &conv2d_backward_data<T>, py::arg("params"), py::arg("grad_output").noconvert(),
        py::arg("weight").noconvert(), py::arg("grad_input").noconvert(), py::arg("algo") = "auto");
  m.def("conv2d_backward_weight", &conv2d_backward_weight<T>, py::arg("params"),
        py::arg("grad_output").noconvert(), py::arg("input").noconvert(), py::arg("grad_weight").noconvert(),
        py::arg("algo") = "auto");
  m.def("conv2d_backward_bias", &conv2d_backward_bias<T>, py::arg("params"), py::arg("grad_output").noconvert(),
        py::arg("grad_bias").noconvert());
  // indices int64 (torch's) or int32: one overload each.
  m.def("max_pool2d_forward", &max_pool2d_forward<T, int64_t>, py::arg("params"), py::arg("input").noconvert(),
        py::arg("output").noconvert(), py::arg("indices").noconvert(), py::arg("reference") = false);
  m.def("max_pool2d_forward", &max_pool2d_forward<T, int32_t>, py::arg("params"), py::arg("input").noconvert(),
        py::arg("output").noconvert(), py::arg("indices").noconvert(), py::arg("reference") = false);
  m.def("max_pool2d_backward", &max_pool2d_backward<T, int64_t>, py::arg("params"),
        py::arg("grad_output").noconvert(), py::arg("indices").noconvert(), py::arg("grad_input").noconvert());
  m.def("max_pool2d_backward", &max_pool2d_backward<T, int32_t>, py::arg("params"),
        py::arg("grad_output").noconvert(), py::arg("indices").noconvert(), py::arg("grad_input").noconvert());
  m.def("im2col", &im2col<T>, py::arg("params"), py::arg("batch"), py::arg("input").noconvert(),
        py::arg("output").noconvert());
  m.def("col2im", &col2im<T>, py::arg("params"), py::arg("batch"), py::arg("input").noconvert(),
        py::arg("output").noconvert());
}

}  // namespace

#ifdef CONVX_WITH_CUDA
// ==== CUDA entry points ===========================================================
// Device tensors cross as raw pointers (tensor.data_ptr()) with the device index
// and torch's current stream for that device; the Python layer
// (convx/_cuda_kernels.py) checks dtype, device and contiguity and allocates every
// output and workspace with torch. What can be checked here is: the params
// (validated first, so a bad shape never reaches a launch), the dtype name and
// null pointers for non-empty buffers. Nothing here calls CUDA before a launch is
// due, so these functions are safe to call on a machine without a GPU until then.
#include "convx/conv2d_cuda.h"
#include "convx/cuda_launch.h"
#include "convx/im2col_cuda.h"
#include "convx/max_pool2d_cuda.h"

namespace {

using Pointer = std::uintptr_t;

// Calls fn(T{}) with T the C++ type of a torch dtype name.
template <typename Fn>
auto with_dtype(const std::string& dtype, Fn&& fn) {
  if (dtype == "float32") return fn(float{});
  if (dtype == "float64") return fn(double{});
  throw py::type_error("dtype must be 'float32' or 'float64', got '" + dtype + "'");
}

template <typename T>
T* device_pointer(Pointer ptr, int64_t elements, const char* name) {
  if (elements > 0 && ptr == 0)
    throw std::invalid_argument(std::string(name) + " is a null pointer but must hold " + std::to_string(elements) +
                                " elements");
  if (ptr % alignof(T) != 0) throw std::invalid_argument(std::string(name) + " is not aligned to its dtype");
  return reinterpret_cast<T*>(ptr);
}

CudaLaunch launch_on(int device, Pointer stream) {
  if (device < 0) throw std::invalid_argument("device must be a CUDA device index, got " + std::to_string(device));
  CudaLaunch launch;
  launch.device = device;
  launch.stream = stream;
  return launch;
}

Conv2dDirection direction_from_name(const std::string& direction) {
  if (direction == "forward") return Conv2dDirection::Forward;
  if (direction == "backward_data") return Conv2dDirection::BackwardData;
  if (direction == "backward_weight") return Conv2dDirection::BackwardWeight;
  throw std::invalid_argument("direction must be 'forward', 'backward_data' or 'backward_weight', got '" +
                              direction + "'");
}

void bind_cuda(py::module_& m) {
  m.def("cuda_build_info", &cuda_build_info, "CUDA version and architectures this build was compiled for.");
  m.def("cuda_driver_version", &cuda_driver_version, "Installed CUDA driver version (e.g. 13000), 0 if none.");

  m.def("conv2d_cuda_plan", [](const Conv2dParams& p, const std::string& direction, const std::string& algo,
                               const std::string& dtype, int64_t sm_count) {
    const Conv2dCudaAlgo a = conv2d_cuda_algo_from_name(algo);
    const int64_t size = with_dtype(dtype, [](auto t) { return int64_t(sizeof(t)); });
    const Conv2dCudaPlan plan = conv2d_cuda_plan(p, direction_from_name(direction), a, size, sm_count);
    return py::make_tuple(std::string(conv2d_cuda_algo_name(plan.algo)), plan.workspace_bytes);
  }, py::arg("params"), py::arg("direction"), py::arg("algo"), py::arg("dtype"), py::arg("sm_count"),
     "(algorithm that will run, workspace bytes it needs) for one conv2d CUDA call.");

  m.def("conv2d_forward_cuda", [](const Conv2dParams& p, const std::string& dtype, Pointer input, Pointer weight,
                                  Pointer bias, Pointer output, const std::string& algo, int device, Pointer stream) {
    p.validate();
    const Conv2dCudaAlgo a = conv2d_cuda_algo_from_name(algo);
    const CudaLaunch launch = launch_on(device, stream);
    return with_dtype(dtype, [&](auto t) {
      using T = decltype(t);
      const T* b = bias ? device_pointer<T>(bias, p.K, "bias") : nullptr;
      py::gil_scoped_release release;
      return std::string(conv2d_cuda_algo_name(conv2d_forward_cuda<T>(
          p, device_pointer<T>(input, p.input_numel(), "input"), device_pointer<T>(weight, p.weight_numel(), "weight"),
          b, device_pointer<T>(output, p.output_numel(), "output"), a, launch)));
    });
  }, py::arg("params"), py::arg("dtype"), py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("output"),
     py::arg("algo"), py::arg("device"), py::arg("stream"));

  m.def("conv2d_backward_data_cuda", [](const Conv2dParams& p, const std::string& dtype, Pointer grad_output,
                                        Pointer weight, Pointer grad_input, const std::string& algo, int device,
                                        Pointer stream) {
    p.validate();
    const Conv2dCudaAlgo a = conv2d_cuda_algo_from_name(algo);
    const CudaLaunch launch = launch_on(device, stream);
    return with_dtype(dtype, [&](auto t) {
      using T = decltype(t);
      py::gil_scoped_release release;
      return std::string(conv2d_cuda_algo_name(conv2d_backward_data_cuda<T>(
          p, device_pointer<T>(grad_output, p.output_numel(), "grad_output"),
          device_pointer<T>(weight, p.weight_numel(), "weight"),
          device_pointer<T>(grad_input, p.input_numel(), "grad_input"), a, launch)));
    });
  }, py::arg("params"), py::arg("dtype"), py::arg("grad_output"), py::arg("weight"), py::arg("grad_input"),
     py::arg("algo"), py::arg("device"), py::arg("stream"));

  m.def("conv2d_backward_weight_cuda", [](const Conv2dParams& p, const std::string& dtype, Pointer grad_output,
                                          Pointer input, Pointer grad_weight, const std::string& algo,
                                          Pointer workspace, int64_t workspace_bytes, int64_t sm_count, int device,
                                          Pointer stream) {
    p.validate();
    const Conv2dCudaAlgo a = conv2d_cuda_algo_from_name(algo);
    const CudaLaunch launch = launch_on(device, stream);
    return with_dtype(dtype, [&](auto t) {
      using T = decltype(t);
      void* ws = device_pointer<T>(workspace, workspace_bytes, "workspace");
      py::gil_scoped_release release;
      return std::string(conv2d_cuda_algo_name(conv2d_backward_weight_cuda<T>(
          p, device_pointer<T>(grad_output, p.output_numel(), "grad_output"),
          device_pointer<T>(input, p.input_numel(), "input"),
          device_pointer<T>(grad_weight, p.weight_numel(), "grad_weight"), a, ws, workspace_bytes, sm_count,
          launch)));
    });
  }, py::arg("params"), py::arg("dtype"), py::arg("grad_output"), py::arg("input"), py::arg("grad_weight"),
     py::arg("algo"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("sm_count"), py::arg("device"),
     py::arg("stream"));

  m.def("conv2d_backward_bias_cuda", [](const Conv2dParams& p, const std::string& dtype, Pointer grad_output,
                                        Pointer grad_bias, int device, Pointer stream) {
    p.validate();
    const CudaLaunch launch = launch_on(device, stream);
    with_dtype(dtype, [&](auto t) {
      using T = decltype(t);
      py::gil_scoped_release release;
      conv2d_backward_bias_cuda<T>(p, device_pointer<T>(grad_output, p.output_numel(), "grad_output"),
                                   device_pointer<T>(grad_bias, p.K, "grad_bias"), launch);
      return 0;
    });
  }, py::arg("params"), py::arg("dtype"), py::arg("grad_output"), py::arg("grad_bias"), py::arg("device"),
     py::arg("stream"));

  m.def("max_pool2d_forward_cuda", [](const Pool2dParams& p, const std::string& dtype, Pointer input,
                                      Pointer output, Pointer indices, int device, Pointer stream) {
    p.validate();
    const CudaLaunch launch = launch_on(device, stream);
    with_dtype(dtype, [&](auto t) {
      using T = decltype(t);
      py::gil_scoped_release release;
      max_pool2d_forward_cuda<T>(p, device_pointer<T>(input, p.input_numel(), "input"),
                                 device_pointer<T>(output, p.output_numel(), "output"),
                                 device_pointer<int64_t>(indices, p.output_numel(), "indices"), launch);
      return 0;
    });
  }, py::arg("params"), py::arg("dtype"), py::arg("input"), py::arg("output"), py::arg("indices"),
     py::arg("device"), py::arg("stream"));

  m.def("max_pool2d_backward_cuda", [](const Pool2dParams& p, const std::string& dtype, Pointer grad_output,
                                       Pointer indices, Pointer grad_input, int device, Pointer stream) {
    p.validate();
    const CudaLaunch launch = launch_on(device, stream);
    with_dtype(dtype, [&](auto t) {
      using T = decltype(t);
      py::gil_scoped_release release;
      max_pool2d_backward_cuda<T>(p, device_pointer<T>(grad_output, p.output_numel(), "grad_output"),
                                  device_pointer<int64_t>(indices, p.output_numel(), "indices"),
                                  device_pointer<T>(grad_input, p.input_numel(), "grad_input"), launch);
      return 0;
    });
  }, py::arg("params"), py::arg("dtype"), py::arg("grad_output"), py::arg("indices"), py::arg("grad_input"),
     py::arg("device"), py::arg("stream"));

  // Batched: image N x C x H x W, columns N x (C*kh*kw) x L.
  m.def("im2col_cuda", [](const Im2colParams& p, int64_t N, const std::string& dtype, Pointer image, Pointer col,
                          int device, Pointer stream) {
    p.validate();
    if (N < 0) throw std::invalid_argument("batch size must be non-negative, got " + std::to_string(N));
    const int64_t image_numel = checked_product({N, p.C, p.H, p.W}, "input size");
    const int64_t col_numel = checked_product({N, p.col_rows(), p.col_cols()}, "output size");
    const CudaLaunch launch = launch_on(device, stream);
    with_dtype(dtype, [&](auto t) {
      using T = decltype(t);
      py::gil_scoped_release release;
      im2col_cuda<T>(p, N, device_pointer<T>(image, image_numel, "input"), device_pointer<T>(col, col_numel, "output"),
                     launch);
      return 0;
    });
  }, py::arg("params"), py::arg("batch"), py::arg("dtype"), py::arg("input"), py::arg("output"), py::arg("device"),
     py::arg("stream"));

  m.def("col2im_cuda", [](const Im2colParams& p, int64_t N, const std::string& dtype, Pointer col, Pointer image,
                          int device, Pointer stream) {
    p.validate();
    if (N < 0) throw std::invalid_argument("batch size must be non-negative, got " + std::to_string(N));
    const int64_t image_numel = checked_product({N, p.C, p.H, p.W}, "output size");
    const int64_t col_numel = checked_product({N, p.col_rows(), p.col_cols()}, "input size");
    const CudaLaunch launch = launch_on(device, stream);
    with_dtype(dtype, [&](auto t) {
      using T = decltype(t);
      py::gil_scoped_release release;
      col2im_cuda<T>(p, N, device_pointer<T>(col, col_numel, "input"),
                     device_pointer<T>(image, image_numel, "output"), launch);
      return 0;
    });
  }, py::arg("params"), py::arg("batch"), py::arg("dtype"), py::arg("input"), py::arg("output"), py::arg("device"),
     py::arg("stream"));
}

}  // namespace
#endif  // CONVX_WITH_CUDA

PYBIND11_MODULE(_C, m) {
  m.doc() = "convx kernels (C++). Use convx.functional; this module trusts nothing but checks only sizes.";

  // Besides the default constructor and the fields, one call that sets every
  // field and validates: the per-call path of convx.functional, where sixteen
  // attribute stores cost more than the rest of the argument checks (~20 us
  // right after a large conv, with the interpreter cold).
  py::class_<Conv2dParams>(m, "Conv2dParams")
      .def(py::init<>())
      .def(py::init([](int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                       std::pair<int64_t, int64_t> stride, std::array<int64_t, 4> pads,
                       std::pair<int64_t, int64_t> dilation, int64_t groups) {
             Conv2dParams p;
             p.N = N, p.C = C, p.H = H, p.W = W, p.K = K, p.R = R, p.S = S;
             std::tie(p.stride_h, p.stride_w) = stride;
             p.pad_top = pads[0], p.pad_bottom = pads[1], p.pad_left = pads[2], p.pad_right = pads[3];
             std::tie(p.dilation_h, p.dilation_w) = dilation;
             p.groups = groups;
             p.validate();
             return p;
           }),
           py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("K"), py::arg("R"), py::arg("S"),
           py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("groups"),
           "Validated params: stride and dilation (h, w), padding (top, bottom, left, right).")
      .def_readwrite("N", &Conv2dParams::N).def_readwrite("C", &Conv2dParams::C)
      .def_readwrite("H", &Conv2dParams::H).def_readwrite("W", &Conv2dParams::W)
      .def_readwrite("K", &Conv2dParams::K).def_readwrite("R", &Conv2dParams::R)
      .def_readwrite("S", &Conv2dParams::S)
      .def_readwrite("stride_h", &Conv2dParams::stride_h).def_readwrite("stride_w", &Conv2dParams::stride_w)
      .def_readwrite("pad_top", &Conv2dParams::pad_top).def_readwrite("pad_bottom", &Conv2dParams::pad_bottom)
      .def_readwrite("pad_left", &Conv2dParams::pad_left).def_readwrite("pad_right", &Conv2dParams::pad_right)
      .def_readwrite("dilation_h", &Conv2dParams::dilation_h)
      .def_readwrite("dilation_w", &Conv2dParams::dilation_w)
      .def_readwrite("groups", &Conv2dParams::groups)
      // Sizes of validated params only: out_h() divides by the stride.
      .def("out_h", [](const Conv2dParams& p) { p.validate(); return p.out_h(); })
      .def("out_w", [](const Conv2dParams& p) { p.validate(); return p.out_w(); })
      .def("validate", &Conv2dParams::validate);

  py::class_<Pool2dParams>(m, "Pool2dParams")
      .def(py::init<>())
      .def(py::init([](int64_t N, int64_t C, int64_t H, int64_t W, std::pair<int64_t, int64_t> kernel,
                       std::pair<int64_t, int64_t> stride, std::pair<int64_t, int64_t> padding,
                       std::pair<int64_t, int64_t> dilation, bool ceil_mode) {
             Pool2dParams p;
             p.N = N, p.C = C, p.H = H, p.W = W;
             std::tie(p.kernel_h, p.kernel_w) = kernel;
             std::tie(p.stride_h, p.stride_w) = stride;
             std::tie(p.pad_h, p.pad_w) = padding;
             std::tie(p.dilation_h, p.dilation_w) = dilation;
             p.ceil_mode = ceil_mode;
             p.validate();
             return p;
           }),
           py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("kernel"), py::arg("stride"),
           py::arg("padding"), py::arg("dilation"), py::arg("ceil_mode"),
           "Validated params, each pair (h, w).")
      .def_readwrite("N", &Pool2dParams::N).def_readwrite("C", &Pool2dParams::C)
      .def_readwrite("H", &Pool2dParams::H).def_readwrite("W", &Pool2dParams::W)
      .def_readwrite("kernel_h", &Pool2dParams::kernel_h).def_readwrite("kernel_w", &Pool2dParams::kernel_w)
      .def_readwrite("stride_h", &Pool2dParams::stride_h).def_readwrite("stride_w", &Pool2dParams::stride_w)
      .def_readwrite("pad_h", &Pool2dParams::pad_h).def_readwrite("pad_w", &Pool2dParams::pad_w)
      .def_readwrite("dilation_h", &Pool2dParams::dilation_h)
      .def_readwrite("dilation_w", &Pool2dParams::dilation_w)
      .def_readwrite("ceil_mode", &Pool2dParams::ceil_mode)
      // Sizes of validated params only: out_h() divides by the stride.
      .def("out_h", [](const Pool2dParams& p) { p.validate(); return p.out_h(); })
      .def("out_w", [](const Pool2dParams& p) { p.validate(); return p.out_w(); })
      .def("validate", &Pool2dParams::validate);

  py::class_<Im2colParams>(m, "Im2colParams")
      .def(py::init<>())
      .def_readwrite("C", &Im2colParams::C).def_readwrite("H", &Im2colParams::H)
      .def_readwrite("W", &Im2colParams::W)
      .def_readwrite("kernel_h", &Im2colParams::kernel_h).def_readwrite("kernel_w", &Im2colParams::kernel_w)
      .def_readwrite("stride_h", &Im2colParams::stride_h).def_readwrite("stride_w", &Im2colParams::stride_w)
      .def_readwrite("pad_top", &Im2colParams::pad_top).def_readwrite("pad_bottom", &Im2colParams::pad_bottom)
      .def_readwrite("pad_left", &Im2colParams::pad_left).def_readwrite("pad_right", &Im2colParams::pad_right)
      .def_readwrite("dilation_h", &Im2colParams::dilation_h)
      .def_readwrite("dilation_w", &Im2colParams::dilation_w)
      // Sizes of validated params only: out_h() divides by the stride.
      .def("out_h", [](const Im2colParams& p) { p.validate(); return p.out_h(); })
      .def("out_w", [](const Im2colParams& p) { p.validate(); return p.out_w(); })
      .def("validate", &Im2colParams::validate);

  bind_typed<float>(m);
  bind_typed<double>(m);

  m.def("conv2d_choose_algo", [](const Conv2dParams& p, const std::string& direction) {
    p.validate();
    Conv2dDirection d;
    if (direction == "forward") d = Conv2dDirection::Forward;
    else if (direction == "backward_data") d = Conv2dDirection::BackwardData;
    else if (direction == "backward_weight") d = Conv2dDirection::BackwardWeight;
    else throw std::invalid_argument("direction must be 'forward', 'backward_data' or 'backward_weight', got '" +
                                     direction + "'");
    return std::string(conv2d_algo_name(conv2d_choose_algo(p, d)));
  }, py::arg("params"), py::arg("direction"));
  m.def("set_allow_winograd_4x4", &conv2d_set_allow_winograd_4x4, py::arg("allow"),
        "Whether the CPU dispatcher may pick Winograd F(4x4) (process-wide).");
  m.def("allow_winograd_4x4", &conv2d_allow_winograd_4x4);
  m.def("_winograd_set_budgets", &conv2d_winograd_set_budgets, py::arg("forward_bytes"), py::arg("weight_bytes"),
        "Test seam: the Winograd workspace budgets in bytes (forward and backward-data, weight gradient); "
        "<= 0 keeps one. Returns the previous pair.");
  m.def("_gemm_abt_uses_dot_products", &gemm_abt_uses_dot_products, py::arg("m"), py::arg("n"),
        "Test seam: whether an M x N product of row tables (the shifted-plane weight gradient) runs as dot "
        "products rather than the packed GEMM.");
  m.def("_gemm_set_in_place_b", &gemm_set_in_place_b, py::arg("mode"),
        "Test seam: whether the GEMM reads a plain B in place instead of packing it, for an A of at most 256 "
        "rows: -1 by its rule, 0 never, 1 always. Returns the previous setting.");
  m.def("_gemm_reads_b_in_place", &gemm_reads_b_in_place, py::arg("m"), py::arg("n"), py::arg("k"),
        py::arg("elem_bytes"), "Test seam: whether gemm_cpu reads B in place for this product.");
  m.def("_shifted_set_register_tiles", &conv2d_shifted_set_register_tiles, py::arg("mode"),
        "Test seam: whether the shifted forward runs by AVX-512 register tiles instead of the GEMM (float, one "
        "group): -1 by its rule, 0 never, 1 always. Returns the previous setting.");
  m.def("_shifted_uses_register_tiles", &conv2d_shifted_forward_uses_register_tiles, py::arg("params"),
        py::arg("elem_bytes"), "Test seam: whether the shifted forward runs by register tiles for this layer.");
  m.def("simd_level", &simd_level, "Instruction set the SIMD kernels use on this CPU.");
  m.def("max_threads", &max_threads, "OpenMP threads a kernel started from this thread uses.");
  // ---- benchmark support: the machine's FP32 peak and the thread count at run time ----
  m.def("measure_fp32_peak", [](double seconds, int threads) {
    Fp32PeakResult r;
    {
      py::gil_scoped_release release;
      r = measure_fp32_peak_cpu(seconds, threads);
    }
    py::dict d;
    d["flops_per_second"] = r.flops_per_second;
    d["seconds"] = r.seconds;
    d["threads"] = r.threads;
    d["simd"] = r.simd;
    return d;
  }, py::arg("seconds") = 0.5, py::arg("threads") = 0,
     "FP32 FLOP/s of an FMA loop on `threads` OpenMP threads (0: all) timed for `seconds`.");
  m.def("set_num_threads", [](int n) {
    if (n <= 0) throw std::invalid_argument("threads must be positive, got " + std::to_string(n));
    omp_set_num_threads(n);
  }, py::arg("threads"), "Threads later convx kernels started from the calling thread use (omp_set_num_threads).");
  m.def("workspace_bytes_held", &workspace_bytes_held,
        "Bytes of scratch memory the CPU kernels keep between calls, over all threads.");
  m.def("workspace_keeps_blocks", &workspace_keeps_blocks,
        "Whether scratch memory is kept between calls (not in sanitizer builds, where every buffer is its own).");
  m.def("release_workspace", []() {
    py::gil_scoped_release release;
    workspace_release();
  }, "Free the kept scratch buffers of the calling thread and of its OpenMP team.");
  m.attr("__version__") = CONVX_VERSION;
  m.attr("build_type") = CONVX_BUILD_TYPE;

  // ==== CUDA (keep this block last) ====
#ifdef CONVX_WITH_CUDA
  m.attr("has_cuda") = true;
  bind_cuda(m);
#else
  m.attr("has_cuda") = false;
#endif
}

// Argument checks shared by every op (each op's own sequence of them is in
// op_checks.h). Each message names the argument and what was expected;
// mcvd/ops/_checks.py raises the same messages for the reference backend,
// and the tests assert them.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

namespace mcvd {

// A `Tensor?` argument of the schemas.
using OptTensor = std::optional<at::Tensor>;

inline std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    out += std::to_string(s[i]);
    if (i + 1 < s.size()) out += ", ";
  }
  return out + "]";
}

// Dtypes print as Python does ("torch.float32"), so both layers of checks
// give the same message.
inline std::string dtype_str(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

inline void check_rank(const at::Tensor& t, const char* name, int64_t rank,
                       const char* layout) {
  TORCH_CHECK(t.dim() == rank, name, ": expected a ", rank, "-d tensor ",
              layout, ", got shape ", shape_str(t.sizes()));
}

inline void check_shape(const at::Tensor& t, const char* name,
                        at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, name, ": expected shape ",
              shape_str(expected), ", got ", shape_str(t.sizes()));
}

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble ||
                  t.scalar_type() == at::kBFloat16 ||
                  t.scalar_type() == at::kHalf,
              name,
              ": expected a floating dtype (float32, float64, bfloat16, "
              "float16), got ",
              dtype_str(t.scalar_type()));
}

inline void check_same_dtype(const at::Tensor& t, const char* name,
                             const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, ": expected dtype ",
              dtype_str(ref.scalar_type()), " (the dtype of ", ref_name,
              "), got ", dtype_str(t.scalar_type()));
}

inline void check_same_device(const at::Tensor& t, const char* name,
                              const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, ": expected device ",
              ref.device(), " (the device of ", ref_name, "), got ",
              t.device());
}

inline void check_dtype(const at::Tensor& t, const char* name,
                        at::ScalarType expected) {
  TORCH_CHECK(t.scalar_type() == expected, name, ": expected dtype ",
              dtype_str(expected), ", got ", dtype_str(t.scalar_type()));
}

// A tensor that must match `ref` in device and dtype and have the given
// shape (the order of mcvd/ops/_checks.py's check_like).
inline void check_like(const at::Tensor& t, const char* name,
                       const at::Tensor& ref, const char* ref_name,
                       at::IntArrayRef expected) {
  check_same_device(t, name, ref, ref_name);
  check_same_dtype(t, name, ref, ref_name);
  check_shape(t, name, expected);
}

// An optional tensor that must match `ref` in dtype and device and have the
// given shape.
inline void check_optional(const OptTensor& t, const char* name,
                           const at::Tensor& ref, const char* ref_name,
                           at::IntArrayRef expected) {
  if (!t.has_value()) return;
  check_like(*t, name, ref, ref_name, expected);
}

// The CUDA kernels read device memory of the tensor's own device.
inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got device ", t.device());
}

}  // namespace mcvd

// Fused selective scan (Mamba-1, forward only) as an OpenVINO extension: the custom operator
// mtad::SelectiveScan, and its ONNX frontend mapping for nodes of domain "mtad", op_type
// "SelectiveScan" (written by `mtad export --fused-scan`, see mtad/deploy/fused_scan.py).
// No torch: raw float pointers, threads from OpenVINO's own TBB pool.
//
// Inputs (float32, contiguous; channels innermost, the layout the model's activations have):
//   u (b, l, d), delta (b, l, d), A (d, n), B (b, l, n), C (b, l, n), then those of
//   D (d), z (b, l, d), delta_bias (d) that the attributes has_D, has_z, has_delta_bias say
//   are present, in that order. Attribute delta_softplus (int 0/1). Output y (b, l, d):
//   dt = delta + delta_bias; dt = softplus(dt) if delta_softplus
//   h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t;  y_t = C_t . h_t + D u_t;  y_t *= silu(z_t)
// the maths of mtad/ops/scan_export.py's selective_scan_export (and of the torch `cpp`
// backend's forward, mtad/ops/csrc/selective_scan_cpu.cpp, whose loop this is): log-decays
// below -60 are raised to -60; state in float32.
// Work items are (batch row, block of channels), each one pass over the sequence with its
// state (n x block) in registers/L1 and the channel loop vectorised.
#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/frontend/onnx/extension/conversion.hpp>
#include <openvino/op/op.hpp>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// exp() that the compiler vectorises: Cephes' single-precision polynomial (about 1 ulp), as in
// selective_scan_cpu.cpp. Arguments clamped to [lo, 88].
inline float vexp(float x, float lo) {
  x = x < lo ? lo : x;
  x = x > 88.0f ? 88.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23
  float fx = x * 1.44269504088896341f + magic;
  int32_t bits;
  std::memcpy(&bits, &fx, 4);
  fx -= magic;
  float r = x - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t e = ((bits - 0x4B400000) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, 4);
  return p * scale;
}

// log() that the compiler vectorises: Cephes' logf (about 1 ulp) for normal x > 0.
inline float vlog(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, 4);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  bits = (bits & 0x807fffff) | 0x3f000000;  // mantissa in [0.5, 1)
  float m;
  std::memcpy(&m, &bits, 4);
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}

// softplus in its stable form, max(x, 0) + log(1 + exp(-|x|)) (as scan_export.py writes it)
inline float softplus(float x) {
  return (x > 0.0f ? x : 0.0f) + vlog(1.0f + vexp(-std::fabs(x), -87.0f));
}

inline float silu(float x) { return x / (1.0f + vexp(-x, -87.0f)); }

constexpr float kLogDecayFloor = -60.0f;

struct Plan {
  int64_t b, l, d, n, nblk, DB;
};

Plan make_plan(int64_t b, int64_t l, int64_t d, int64_t n) {
  // channel blocks of at most 128 (state and work buffers in L1/L2), and at least two work
  // items per thread where the channels allow it
  int64_t nblk = (d + 127) / 128;
  const int64_t threads = std::max(1, tbb::this_task_arena::max_concurrency());
  while (b * nblk < 2 * threads && d / (nblk + 1) >= 8) nblk++;
  int64_t DB = (d + nblk - 1) / nblk;
  DB = std::min(d, (DB + 7) / 8 * 8);
  return Plan{b, l, d, n, (d + DB - 1) / DB, DB};
}

void scan_item(const Plan& P, int64_t item, const float* u, const float* delta, const float* At,
               const float* Bm, const float* Cm, const float* D, const float* z,
               const float* bias, bool use_softplus, float* out, float* h, float* dt,
               float* du, float* y, const float* zeros) {
  const int64_t l = P.l, d = P.d, n = P.n;
  const int64_t bi = item / P.nblk, blk = item % P.nblk;
  const int64_t j0 = blk * P.DB, m = std::min(P.DB, d - j0);
  std::fill(h, h + n * m, 0.0f);
  for (int64_t t = 0; t < l; ++t) {
    const int64_t row = bi * l + t;
    const float* ut = u + row * d + j0;
    const float* dlt = delta + row * d + j0;
    const float* Bt = Bm + row * n;
    const float* Ct = Cm + row * n;
    const float* bj = bias ? bias + j0 : zeros;
    if (use_softplus) {
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) dt[j] = softplus(dlt[j] + bj[j]);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) dt[j] = dlt[j] + bj[j];
    }
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) {
      du[j] = dt[j] * ut[j];
      y[j] = D ? D[j0 + j] * ut[j] : 0.0f;
    }
    for (int64_t k = 0; k < n; ++k) {
      const float bk = Bt[k], ck = Ct[k];
      const float* Ak = At + k * d + j0;
      float* hk = h + k * m;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) {
        const float a = vexp(dt[j] * Ak[j], kLogDecayFloor);
        const float hv = a * hk[j] + du[j] * bk;
        hk[j] = hv;
        y[j] += ck * hv;
      }
    }
    float* o = out + row * d + j0;
    if (z) {
      const float* zt = z + row * d + j0;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) o[j] = y[j] * silu(zt[j]);
    } else {
      std::memcpy(o, y, m * sizeof(float));
    }
  }
}

}  // namespace

namespace mtad {

class SelectiveScan : public ov::op::Op {
public:
  OPENVINO_OP("SelectiveScan", "mtad_extension");

  SelectiveScan() = default;
  SelectiveScan(const ov::OutputVector& args, bool delta_softplus, bool has_D, bool has_z,
                bool has_bias)
      : Op(args), m_softplus(delta_softplus), m_has_D(has_D), m_has_z(has_z),
        m_has_bias(has_bias) {
    constructor_validate_and_infer_types();
  }

  void validate_and_infer_types() override {
    NODE_VALIDATION_CHECK(this, get_input_size() == expected_inputs(),
                          "mtad::SelectiveScan takes u, delta, A, B, C and the present of D, z, "
                          "delta_bias: ", expected_inputs(), " inputs, got ", get_input_size());
    for (size_t i = 0; i < get_input_size(); ++i)
      NODE_VALIDATION_CHECK(this, get_input_element_type(i).is_dynamic() ||
                                      get_input_element_type(i) == ov::element::f32,
                            "mtad::SelectiveScan: input ", i, " must be f32");
    set_output_type(0, ov::element::f32, get_input_partial_shape(0));
  }

  std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
    return std::make_shared<SelectiveScan>(args, m_softplus, m_has_D, m_has_z, m_has_bias);
  }

  size_t expected_inputs() const { return 5 + m_has_D + m_has_z + m_has_bias; }

  bool visit_attributes(ov::AttributeVisitor& visitor) override {
    visitor.on_attribute("delta_softplus", m_softplus);
    visitor.on_attribute("has_D", m_has_D);
    visitor.on_attribute("has_z", m_has_z);
    visitor.on_attribute("has_delta_bias", m_has_bias);
    return true;
  }

  bool has_evaluate() const override { return true; }

  bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
    const ov::Shape us = inputs[0].get_shape();
    const ov::Shape as = inputs[2].get_shape();
    if (us.size() != 3 || as.size() != 2 || as[0] != us[2]) return false;
    const int64_t b = us[0], l = us[1], d = us[2], n = as[1];
    const ov::Shape bs = inputs[3].get_shape();
    if (inputs[1].get_shape() != us || bs != ov::Shape{us[0], us[1], as[1]} ||
        inputs[4].get_shape() != bs)
      return false;
    if (inputs.size() != expected_inputs()) return false;
    size_t next = 5;
    auto optional = [&](bool present, const char* name, size_t size) -> const float* {
      if (!present) return nullptr;
      const ov::Tensor& t = inputs[next++];
      if (t.get_size() != size)
        OPENVINO_THROW("mtad::SelectiveScan: ", name, " has ", t.get_size(),
                       " elements, expected ", size);
      return t.data<const float>();
    };
    const float* D = optional(m_has_D, "D", d);
    const float* z = optional(m_has_z, "z", b * l * d);
    const float* bias = optional(m_has_bias, "delta_bias", d);
    outputs[0].set_shape(us);
    const float* u = inputs[0].data<const float>();
    const float* delta = inputs[1].data<const float>();
    const float* A = inputs[2].data<const float>();
    const float* Bm = inputs[3].data<const float>();
    const float* Cm = inputs[4].data<const float>();
    float* out = outputs[0].data<float>();
    std::vector<float> At(n * d);  // A^T (n, d): channels innermost
    for (int64_t j = 0; j < d; ++j)
      for (int64_t k = 0; k < n; ++k) At[k * d + j] = A[j * n + k];
    const Plan P = make_plan(b, l, d, n);
    const bool sp = m_softplus;
    tbb::parallel_for(int64_t(0), P.b * P.nblk, [&](int64_t item) {
      std::vector<float> work(P.DB * (n + 4), 0.0f);   // h, dt, du, y, zeros (no bias)
      float* h = work.data();
      scan_item(P, item, u, delta, At.data(), Bm, Cm, D, z, bias, sp, out, h, h + n * P.DB,
                h + (n + 1) * P.DB, h + (n + 2) * P.DB, h + (n + 3) * P.DB);
    });
    return true;
  }

private:
  bool m_softplus = false, m_has_D = false, m_has_z = false, m_has_bias = false;
};

}  // namespace mtad

namespace {

ov::OutputVector convert_onnx(const ov::frontend::NodeContext& node) {
  ov::OutputVector args;
  for (int i = 0; i < static_cast<int>(node.get_input_size()); ++i)
    args.push_back(node.get_input(i));
  auto flag = [&](const char* name) { return node.get_attribute<int64_t>(name, 0) != 0; };
  return std::make_shared<mtad::SelectiveScan>(args, flag("delta_softplus"), flag("has_D"),
                                               flag("has_z"), flag("has_delta_bias"))
      ->outputs();
}

}  // namespace

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>(
    {std::make_shared<ov::OpExtension<mtad::SelectiveScan>>(),
     std::make_shared<ov::frontend::onnx::ConversionExtension>("SelectiveScan", "mtad",
                                                               convert_onnx)}));

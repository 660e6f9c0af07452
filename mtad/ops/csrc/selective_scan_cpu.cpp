// Fused CPU selective scan (Mamba-1) for mtad: forward and backward each make one pass over the
// sequence per (batch row, channel block), with the channel block innermost and vectorised.
//
// Layout (all contiguous): u, dt, z, out: (b, l, d); B, C: (b, l, n); At: (n, d) = A^T;
// D: (d,) or empty; ck: (b, nck, n, d), the state before each chunk of K steps.
// dt is the final step size (bias added and softplus applied by the caller).
//   h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t;  y_t = C_t . h_t + D u_t;  out_t = y_t silu(z_t)
// Backward replays one chunk of K steps from its saved state, then runs the adjoint
// g_t = C_t gy_t + exp(dt_{t+1} A) g_{t+1} backwards through it.
// Work is split into (batch row, channel block) items run by ATen's thread pool; every item
// writes its own slices (per-block partials for the sums over channels, per-row partials for the
// sums over the batch), which are added in a fixed order, so results do not depend on threads.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// exp() that the compiler vectorises: Cephes' single-precision polynomial (about 1 ulp), range
// reduction by round-to-nearest through the 1.5 * 2^23 trick (exact without -ffast-math).
// Arguments are clamped to [lo, 88]; lo is the scan's log-decay floor (-60, as the chunked backend).
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
  int32_t e = ((bits - 0x4B400000) + 127) << 23;   // n + 127 in the exponent field
  float scale;
  std::memcpy(&scale, &e, 4);
  return p * scale;
}

inline double vexp(double x, double lo) {
  return std::exp(x < lo ? lo : x);
}

template <typename T> struct Floor;
template <> struct Floor<float> { static constexpr float value = -60.0f; };
template <> struct Floor<double> { static constexpr double value = -600.0; };

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + vexp(-x, T(-87)));
}

struct Plan {
  int64_t b, l, d, n, K, nck, nblk, DB;
};

Plan make_plan(int64_t b, int64_t l, int64_t d, int64_t n, int64_t K) {
  Plan p{b, l, d, n, K, (l + K - 1) / K, 1, d};
  // channel blocks of at most 128 (work buffers stay in L2), and enough items for the threads
  int64_t nblk = (d + 127) / 128;
  const int64_t threads = at::get_num_threads();
  while (b * nblk < 2 * threads && d / (nblk + 1) >= 8) nblk++;
  int64_t DB = (d + nblk - 1) / nblk;
  DB = std::min(d, (DB + 7) / 8 * 8);
  p.DB = DB;
  p.nblk = (d + DB - 1) / DB;
  return p;
}

template <typename T>
void forward_kernel(const Plan& P, const T* u, const T* dt, const T* At, const T* Bm, const T* Cm,
                    const T* D, const T* z, T* out, T* ck, T* last) {
  const int64_t l = P.l, d = P.d, n = P.n, K = P.K, nck = P.nck;
  const T lo = Floor<T>::value;
  at::parallel_for(0, P.b * P.nblk, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> hbuf(n * P.DB), ybuf(P.DB), dubuf(P.DB);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bi = item / P.nblk, blk = item % P.nblk;
      const int64_t j0 = blk * P.DB, m = std::min(P.DB, d - j0);
      T* h = hbuf.data();
      T* y = ybuf.data();
      T* du = dubuf.data();
      std::fill(h, h + n * m, T(0));
      for (int64_t t = 0; t < l; ++t) {
        if (t % K == 0) {
          T* c = ck + ((bi * nck + t / K) * n) * d + j0;
          for (int64_t k = 0; k < n; ++k) std::memcpy(c + k * d, h + k * m, m * sizeof(T));
        }
        const int64_t row = (bi * l + t);
        const T* ut = u + row * d + j0;
        const T* dtt = dt + row * d + j0;
        const T* Bt = Bm + row * n;
        const T* Ct = Cm + row * n;
#pragma omp simd
        for (int64_t j = 0; j < m; ++j) {
          du[j] = dtt[j] * ut[j];
          y[j] = D ? D[j0 + j] * ut[j] : T(0);
        }
        for (int64_t k = 0; k < n; ++k) {
          const T bk = Bt[k], cc = Ct[k];
          const T* Ak = At + k * d + j0;
          T* hk = h + k * m;
#pragma omp simd
          for (int64_t j = 0; j < m; ++j) {
            const T a = vexp(dtt[j] * Ak[j], lo);
            const T hv = a * hk[j] + du[j] * bk;
            hk[j] = hv;
            y[j] += cc * hv;
          }
        }
        T* o = out + row * d + j0;
        if (z) {
          const T* zt = z + row * d + j0;
#pragma omp simd
          for (int64_t j = 0; j < m; ++j) o[j] = y[j] * (zt[j] * sigmoid(zt[j]));
        } else {
          std::memcpy(o, y, m * sizeof(T));
        }
      }
      for (int64_t k = 0; k < n; ++k)
        std::memcpy(last + (bi * n + k) * d + j0, h + k * m, m * sizeof(T));
    }
  });
}

template <typename T>
void backward_kernel(const Plan& P, const T* gout, const T* u, const T* dt, const T* At,
                     const T* Bm, const T* Cm, const T* D, const T* z, const T* ck, T* gu, T* gdt,
                     T* gz, T* gB_part, T* gC_part, T* gA_part, T* gD_part) {
  const int64_t l = P.l, d = P.d, n = P.n, K = P.K, nck = P.nck, b = P.b;
  const T lo = Floor<T>::value;
  at::parallel_for(0, P.b * P.nblk, 1, [&](int64_t begin, int64_t end) {
    const int64_t DB = P.DB;
    std::vector<T> hs((K + 1) * n * DB), as(K * n * DB), carry(n * DB), gAl(n * DB);
    std::vector<T> gyb(DB), gxub(DB), gdtb(DB), dub(DB), gDl(DB);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bi = item / P.nblk, blk = item % P.nblk;
      const int64_t j0 = blk * DB, m = std::min(DB, d - j0);
      const int64_t nm = n * m;
      std::fill(carry.begin(), carry.end(), T(0));
      std::fill(gAl.begin(), gAl.end(), T(0));
      std::fill(gDl.begin(), gDl.end(), T(0));
      T* gy = gyb.data();
      T* gxu = gxub.data();
      T* gd = gdtb.data();
      T* du = dub.data();
      for (int64_t c = nck - 1; c >= 0; --c) {
        const int64_t t0 = c * K, len = std::min(K, l - t0);
        // replay: hs[i + 1] = state after step t0 + i, as[i] = its decay
        const T* cs = ck + ((bi * nck + c) * n) * d + j0;
        for (int64_t k = 0; k < n; ++k) std::memcpy(hs.data() + k * m, cs + k * d, m * sizeof(T));
        for (int64_t i = 0; i < len; ++i) {
          const int64_t row = bi * l + t0 + i;
          const T* ut = u + row * d + j0;
          const T* dtt = dt + row * d + j0;
          const T* Bt = Bm + row * n;
          for (int64_t k = 0; k < n; ++k) {
            const T bk = Bt[k];
            const T* Ak = At + k * d + j0;
            const T* hp = hs.data() + i * nm + k * m;
            T* hn = hs.data() + (i + 1) * nm + k * m;
            T* ak = as.data() + i * nm + k * m;
#pragma omp simd
            for (int64_t j = 0; j < m; ++j) {
              const T a = vexp(dtt[j] * Ak[j], lo);
              ak[j] = a;
              hn[j] = a * hp[j] + dtt[j] * ut[j] * bk;
            }
          }
        }
        for (int64_t i = len - 1; i >= 0; --i) {
          const int64_t t = t0 + i, row = bi * l + t;
          const T* ut = u + row * d + j0;
          const T* dtt = dt + row * d + j0;
          const T* gt = gout + row * d + j0;
          const T* Bt = Bm + row * n;
          const T* Ct = Cm + row * n;
          const T* hcur = hs.data() + (i + 1) * nm;
          const T* hprev = hs.data() + i * nm;
          const T* acur = as.data() + i * nm;
          if (z) {
            // pre-gate output y = C . h + D u, then the gate's gradient
            T* y = gxu;
#pragma omp simd
            for (int64_t j = 0; j < m; ++j) y[j] = D ? D[j0 + j] * ut[j] : T(0);
            for (int64_t k = 0; k < n; ++k) {
              const T cc = Ct[k];
              const T* hk = hcur + k * m;
#pragma omp simd
              for (int64_t j = 0; j < m; ++j) y[j] += cc * hk[j];
            }
            const T* zt = z + row * d + j0;
            T* gzt = gz + row * d + j0;
#pragma omp simd
            for (int64_t j = 0; j < m; ++j) {
              const T s = sigmoid(zt[j]);
              const T silu = zt[j] * s;
              gzt[j] = gt[j] * y[j] * (s * (T(1) + zt[j] - silu));
              gy[j] = gt[j] * silu;
            }
          } else {
            std::memcpy(gy, gt, m * sizeof(T));
          }
#pragma omp simd
          for (int64_t j = 0; j < m; ++j) {
            gxu[j] = T(0);
            gd[j] = T(0);
            du[j] = dtt[j] * ut[j];
            gDl[j] += gy[j] * ut[j];
          }
          T* gBt = gB_part + ((blk * b + bi) * l + t) * n;
          T* gCt = gC_part + ((blk * b + bi) * l + t) * n;
          for (int64_t k = 0; k < n; ++k) {
            const T bk = Bt[k], cc = Ct[k];
            const T* Ak = At + k * d + j0;
            const T* hk = hcur + k * m;
            const T* hpk = hprev + k * m;
            const T* ak = acur + k * m;
            T* ck_ = carry.data() + k * m;
            T* gak = gAl.data() + k * m;
            T sc = T(0), sb = T(0);
#pragma omp simd reduction(+ : sc, sb)
            for (int64_t j = 0; j < m; ++j) {
              const T g = cc * gy[j] + ck_[j];
              sc += gy[j] * hk[j];
              sb += g * du[j];
              gxu[j] += g * bk;
              const T w = g * ak[j] * hpk[j];
              gd[j] += w * Ak[j];
              gak[j] += w * dtt[j];
              ck_[j] = ak[j] * g;
            }
            gCt[k] = sc;
            gBt[k] = sb;
          }
          T* gut = gu + row * d + j0;
          T* gdtt = gdt + row * d + j0;
#pragma omp simd
          for (int64_t j = 0; j < m; ++j) {
            gut[j] = gxu[j] * dtt[j] + (D ? gy[j] * D[j0 + j] : T(0));
            gdtt[j] = gd[j] + gxu[j] * ut[j];
          }
        }
      }
      T* gAp = gA_part + bi * n * d + j0;
      for (int64_t k = 0; k < n; ++k) std::memcpy(gAp + k * d, gAl.data() + k * m, m * sizeof(T));
      std::memcpy(gD_part + bi * d + j0, gDl.data(), m * sizeof(T));
    }
  });
}

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(), "mtad scan_cpu: ", name, " must be contiguous");
  TORCH_CHECK(t.device().is_cpu(), "mtad scan_cpu: ", name, " must be on the CPU");
}

std::vector<at::Tensor> fwd(at::Tensor u, at::Tensor dt, at::Tensor At, at::Tensor Bm,
                            at::Tensor Cm, at::Tensor D, at::Tensor z, int64_t K) {
  for (auto* t : {&u, &dt, &At, &Bm, &Cm, &D, &z}) check(*t, "input");
  const int64_t b = u.size(0), l = u.size(1), d = u.size(2), n = At.size(0);
  Plan P = make_plan(b, l, d, n, K);
  auto out = at::empty_like(u);
  auto ck = at::empty({b, P.nck, n, d}, u.options());
  auto last = at::empty({b, n, d}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mtad_scan_fwd", [&] {
    forward_kernel<scalar_t>(P, u.data_ptr<scalar_t>(), dt.data_ptr<scalar_t>(),
                             At.data_ptr<scalar_t>(), Bm.data_ptr<scalar_t>(),
                             Cm.data_ptr<scalar_t>(), D.numel() ? D.data_ptr<scalar_t>() : nullptr,
                             z.numel() ? z.data_ptr<scalar_t>() : nullptr,
                             out.data_ptr<scalar_t>(), ck.data_ptr<scalar_t>(),
                             last.data_ptr<scalar_t>());
  });
  return {out, ck, last};
}

std::vector<at::Tensor> bwd(at::Tensor gout, at::Tensor u, at::Tensor dt, at::Tensor At,
                            at::Tensor Bm, at::Tensor Cm, at::Tensor D, at::Tensor z,
                            at::Tensor ck, int64_t K) {
  for (auto* t : {&gout, &u, &dt, &At, &Bm, &Cm, &D, &z, &ck}) check(*t, "input");
  const int64_t b = u.size(0), l = u.size(1), d = u.size(2), n = At.size(0);
  Plan P = make_plan(b, l, d, n, K);
  TORCH_CHECK(ck.size(1) == P.nck, "mtad scan_cpu: checkpoint count mismatch");
  auto gu = at::empty_like(u);
  auto gdt = at::empty_like(u);
  auto gz = z.numel() ? at::empty_like(z) : at::empty({0}, u.options());
  auto gB = at::empty({P.nblk, b, l, n}, u.options());
  auto gC = at::empty({P.nblk, b, l, n}, u.options());
  auto gA = at::empty({b, n, d}, u.options());
  auto gD = at::empty({b, d}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mtad_scan_bwd", [&] {
    backward_kernel<scalar_t>(P, gout.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
                              dt.data_ptr<scalar_t>(), At.data_ptr<scalar_t>(),
                              Bm.data_ptr<scalar_t>(), Cm.data_ptr<scalar_t>(),
                              D.numel() ? D.data_ptr<scalar_t>() : nullptr,
                              z.numel() ? z.data_ptr<scalar_t>() : nullptr,
                              ck.data_ptr<scalar_t>(), gu.data_ptr<scalar_t>(),
                              gdt.data_ptr<scalar_t>(),
                              z.numel() ? gz.data_ptr<scalar_t>() : nullptr,
                              gB.data_ptr<scalar_t>(), gC.data_ptr<scalar_t>(),
                              gA.data_ptr<scalar_t>(), gD.data_ptr<scalar_t>());
  });
  // fixed-order sums of the partials
  auto gBs = P.nblk == 1 ? gB[0] : gB.sum(0);
  auto gCs = P.nblk == 1 ? gC[0] : gC.sum(0);
  return {gu, gdt, gA.sum(0), gBs, gCs, gD.sum(0), gz};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &fwd, "selective scan forward (out, chunk states, last state)");
  m.def("backward", &bwd, "selective scan backward (gu, gdt, gA^T, gB, gC, gD, gz)");
}

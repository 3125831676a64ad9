// A Llama decode step for CPUs with AVX512-BF16, as one call: every layer's GEMMs,
// norms, rotary embedding, KV-cache write and one-token attention, then the LM head.
//
// Why: on a 2-core CPU without AMX, oneDNN's bf16 GEMM for the 8 rows of a decode batch
// reaches ~35% of the machine's bf16 peak, and the ~1,200 small eager ops of a Python
// decode step cost as much again (docs/performance.md). Here a
// weight tile is loaded once per pair of inputs columns and multiplied into all rows
// with `vdpbf16ps`, and nothing between the GEMMs goes through the dispatcher.
//
// Numerics: weights, GEMM inputs and the KV cache are bf16 (as in the bf16 sampling
// copy); GEMMs accumulate in float32; the residual stream, norms, rotary embedding,
// softmax and SiLU stay float32 between GEMMs (transformers' bf16 model rounds the
// residual stream to bf16 after every add, so this is the more accurate of the two).
//
// Weight layout ("vnni"): W [N, K] (K even) padded to N' = 48·ceil(N/48) rows and stored
// as [N'/48, K/2, 48, 2]: each tile of 48 output columns (3 blocks of 16, the GEMM's
// register tile) is one contiguous stream in which, for each pair of input columns, the
// 48 columns' two weights sit side by side, which is `vdpbf16ps`'s operand layout.
// `pack_vnni_` below builds it.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

using bf16_t = uint16_t;

// Round to nearest even, as torch's float -> bfloat16 cast (a NaN stays a NaN).
inline bf16_t float_to_bf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<bf16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<bf16_t>(bits >> 16);
}

inline __m512 load_bf16x16(const bf16_t* p) {
  __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// exp(x) for float32 lanes: x = n·ln2 + r, |r| ≤ ln2/2, a degree-6 polynomial for exp(r)
// (relative error below 2e-7 on [-87, 88]), scaled by 2^n.
inline __m512 exp_ps(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f)),
                    _mm512_set1_ps(-103.972084045410f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// ---------------------------------------------------------------------------------------
// GEMM: y[M, N] (float32) = x[M, K] (bf16) · Wᵀ (vnni) + bias.

constexpr int kBlock = 16;   // output columns per vnni block
constexpr int kRowTile = 8;  // rows per register tile
constexpr int kBlocksPerTile = 3;  // 8 × 3 accumulators + 3 weight registers of 32
constexpr int kTileCols = kBlock * kBlocksPerTile;

template <int MT>
inline void gemm_tile(const bf16_t* x, int64_t k_pairs, const bf16_t* w, float* y, int64_t ldy,
                      int64_t n0, int64_t n_valid, const float* bias) {
  constexpr int NB = kBlocksPerTile;
  __m512 acc[MT][NB];
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) acc[m][b] = _mm512_setzero_ps();
  const uint32_t* x32 = reinterpret_cast<const uint32_t*>(x);
  for (int64_t kp = 0; kp < k_pairs; ++kp) {
    __m512i wv[NB];
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b)
      wv[b] = _mm512_loadu_si512(reinterpret_cast<const void*>(w + (kp * NB + b) * 2 * kBlock));
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      __m512i xb = _mm512_set1_epi32(static_cast<int>(x32[m * k_pairs + kp]));
#pragma GCC unroll 4
      for (int b = 0; b < NB; ++b)
        acc[m][b] = _mm512_dpbf16_ps(acc[m][b], (__m512bh)xb, (__m512bh)wv[b]);
    }
  }
#pragma GCC unroll 4
  for (int b = 0; b < NB; ++b) {
    int64_t col = n0 + b * kBlock;
    int64_t left = n_valid - col;
    if (left <= 0) break;
    __mmask16 mask = left >= kBlock ? static_cast<__mmask16>(0xffff)
                                    : static_cast<__mmask16>((1u << left) - 1u);
    __m512 bias_v = bias ? _mm512_maskz_loadu_ps(mask, bias + col) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m)
      _mm512_mask_storeu_ps(y + m * ldy + col, mask, _mm512_add_ps(acc[m][b], bias_v));
  }
}

void gemm_rows(int rows, const bf16_t* x, int64_t k_pairs, const bf16_t* w, float* y, int64_t ldy,
               int64_t n0, int64_t n_valid, const float* bias) {
  switch (rows) {
#define GRAO_ROWS(R) \
  case R: gemm_tile<R>(x, k_pairs, w, y, ldy, n0, n_valid, bias); break;
    GRAO_ROWS(1) GRAO_ROWS(2) GRAO_ROWS(3) GRAO_ROWS(4)
    GRAO_ROWS(5) GRAO_ROWS(6) GRAO_ROWS(7) GRAO_ROWS(8)
#undef GRAO_ROWS
    default: TORCH_CHECK(false, "gemm_rows: ", rows, " rows");
  }
}

// x: [M, K] bf16, contiguous; packed: [N'/48, K/2, 48, 2]; y: [M, ldy] float32.
void gemm(const bf16_t* x, int64_t m_rows, int64_t k, const bf16_t* packed, int64_t n,
          const float* bias, float* y, int64_t ldy) {
  const int64_t k_pairs = k / 2;
  const int64_t tile_cols = kBlock * kBlocksPerTile;
  const int64_t tiles = (n + tile_cols - 1) / tile_cols;
  const int64_t tile_elems = k_pairs * 2 * tile_cols;
  // One contiguous weight stream per tile; its weights (K × 96 bytes) stay in L2 while
  // every row tile reads them.
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const bf16_t* w = packed + t * tile_elems;
      for (int64_t m0 = 0; m0 < m_rows; m0 += kRowTile) {
        const int rows = static_cast<int>(std::min<int64_t>(kRowTile, m_rows - m0));
        gemm_rows(rows, x + m0 * k, k_pairs, w, y + m0 * ldy, ldy, t * tile_cols, n, bias);
      }
    }
  });
}

void check_packed(const at::Tensor& packed, int64_t k, int64_t n, const char* what) {
  TORCH_CHECK(packed.scalar_type() == at::kBFloat16 && packed.is_contiguous() && packed.dim() == 4 &&
                  packed.size(0) == (n + kTileCols - 1) / kTileCols && packed.size(1) == k / 2 &&
                  packed.size(2) == kTileCols && packed.size(3) == 2,
              what, ": expected a contiguous bf16 vnni-packed weight [", (n + kTileCols - 1) / kTileCols,
              ", ", k / 2, ", ", kTileCols, ", 2], got ", packed.sizes(), " ", packed.scalar_type());
}

const float* bias_ptr(const at::Tensor& bias, int64_t n, const char* what) {
  if (bias.numel() == 0) return nullptr;
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == n, what,
              ": bias must be a contiguous float32 [", n, "] (or empty)");
  return bias.data_ptr<float>();
}

// The packed weight's linear map on bf16 rows: x [..., K] -> float32 [..., N].
at::Tensor vnni_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& bias,
                       int64_t n) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16, "vnni_linear: x must be bf16, got ", x.scalar_type());
  const int64_t k = x.size(-1);
  TORCH_CHECK(k % 2 == 0, "vnni_linear: the input width must be even, got ", k);
  check_packed(packed, k, n, "vnni_linear");
  at::Tensor rows = x.reshape({-1, k}).contiguous();
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  at::Tensor y = at::empty({rows.size(0), n}, x.options().dtype(at::kFloat));
  gemm(reinterpret_cast<const bf16_t*>(rows.data_ptr()), rows.size(0), k,
       reinterpret_cast<const bf16_t*>(packed.data_ptr()), n, bias_ptr(bias, n, "vnni_linear"),
       y.data_ptr<float>(), n);
  return y.view(shape);
}

// Packs ``sources`` (their rows stacked: [sum n_i, K], float32 or bf16, contiguous) into
// ``out`` [ceil(N / 48), K / 2, 48, 2] bf16 (columns past N zero), casting as torch does.
// One pass that reads each source row once: the policy's float32 weights are packed
// straight from where they live after every update, with no bf16 copy in between.
void pack_vnni_(at::Tensor out, at::TensorList sources) {
  TORCH_CHECK(out.scalar_type() == at::kBFloat16 && out.is_contiguous() && out.dim() == 4 &&
                  out.size(2) == kTileCols && out.size(3) == 2,
              "pack_vnni_: out must be a contiguous bf16 [T, K/2, ", kTileCols, ", 2]");
  const int64_t k_pairs = out.size(1), k = 2 * k_pairs, tiles = out.size(0);
  std::vector<const void*> rows;
  std::vector<bool> f32;
  for (const at::Tensor& source : sources) {
    TORCH_CHECK(source.dim() == 2 && source.size(1) == k && source.is_contiguous() &&
                    (source.scalar_type() == at::kFloat || source.scalar_type() == at::kBFloat16),
                "pack_vnni_: sources must be contiguous float32 or bf16 [n, ", k, "], got ",
                source.sizes(), " ", source.scalar_type());
    const int64_t item = source.element_size();
    for (int64_t r = 0; r < source.size(0); ++r) {
      rows.push_back(static_cast<const char*>(source.data_ptr()) + r * k * item);
      f32.push_back(source.scalar_type() == at::kFloat);
    }
  }
  const int64_t n = static_cast<int64_t>(rows.size());
  TORCH_CHECK(n <= tiles * kTileCols && n > (tiles - 1) * kTileCols, "pack_vnni_: ", n,
              " rows do not fill ", tiles, " tiles of ", kTileCols);
  bf16_t* dst = reinterpret_cast<bf16_t*>(out.data_ptr());
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      bf16_t* tile = dst + t * k_pairs * kTileCols * 2;
      for (int64_t c = 0; c < kTileCols; ++c) {
        const int64_t row = t * kTileCols + c;
        bf16_t* col = tile + c * 2;
        if (row >= n) {
          for (int64_t kp = 0; kp < k_pairs; ++kp) col[kp * kTileCols * 2] = col[kp * kTileCols * 2 + 1] = 0;
        } else if (f32[row]) {
          const float* src = static_cast<const float*>(rows[row]);
          for (int64_t kp = 0; kp < k_pairs; ++kp) {
            col[kp * kTileCols * 2] = float_to_bf16(src[2 * kp]);
            col[kp * kTileCols * 2 + 1] = float_to_bf16(src[2 * kp + 1]);
          }
        } else {
          const uint32_t* src = static_cast<const uint32_t*>(rows[row]);
          for (int64_t kp = 0; kp < k_pairs; ++kp)
            std::memcpy(col + kp * kTileCols * 2, src + kp, sizeof(uint32_t));
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// The decode step.

// Rounds 16 float32 lanes to bf16 (nearest even) and stores them.
inline void store_bf16x16(bf16_t* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
}

// out[r, i] = bf16(src[r, i]) for float32 rows of ``width`` (a multiple of 16).
inline void round_to_bf16(const float* src, int64_t count, bf16_t* out) {
  for (int64_t i = 0; i < count; i += 16) store_bf16x16(out + i, _mm512_loadu_ps(src + i));
}

// out[r, :] = bf16(h[r, :] · rsqrt(mean(h[r]²) + eps) · weight); width a multiple of 16.
void rms_norm_rows(const float* h, int64_t rows, int64_t width, const float* weight, float eps,
                   bf16_t* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* hr = h + r * width;
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < width; i += 16) {
      __m512 v = _mm512_loadu_ps(hr + i);
      sum = _mm512_fmadd_ps(v, v, sum);
    }
    const __m512 scale = _mm512_set1_ps(1.0f / std::sqrt(_mm512_reduce_add_ps(sum) / width + eps));
    for (int64_t i = 0; i < width; i += 16)
      store_bf16x16(out + r * width + i,
                    _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(hr + i), scale), _mm512_loadu_ps(weight + i)));
  }
}

// h += d over ``count`` floats (a multiple of 16).
inline void add_into(float* h, const float* d, int64_t count) {
  for (int64_t i = 0; i < count; i += 16)
    _mm512_storeu_ps(h + i, _mm512_add_ps(_mm512_loadu_ps(h + i), _mm512_loadu_ps(d + i)));
}

struct Shapes {
  int64_t rows, hidden, heads, kv_heads, dim, inner, vocab, capacity;
};

// One-token attention for row r and key/value head g over key positions [0, length):
// softmax(q·kᵀ·scale) v for the group's heads / kv_heads query heads, q from qkv (float32,
// rotary applied), keys and values from the bf16 cache; writes bf16 [group, D] to out.
void attend(const Shapes& s, const float* q, const bf16_t* keys, const bf16_t* values,
            const uint8_t* key_ok, int64_t length, float scale, float* scores, float* acc,
            bf16_t* out) {
  const int64_t group = s.heads / s.kv_heads, dim = s.dim, chunks = dim / 16;
  for (int64_t j = 0; j < group; ++j) {
    const float* qj = q + j * dim;
    float* sj = scores + j * length;
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t l = 0; l < length; ++l) {
      if (key_ok && !key_ok[l]) { sj[l] = -std::numeric_limits<float>::infinity(); continue; }
      __m512 dot = _mm512_setzero_ps();
      for (int64_t c = 0; c < chunks; ++c)
        dot = _mm512_fmadd_ps(_mm512_loadu_ps(qj + c * 16), load_bf16x16(keys + l * dim + c * 16), dot);
      sj[l] = _mm512_reduce_add_ps(dot) * scale;
      top = std::max(top, sj[l]);
    }
    float total = 0.0f;
    int64_t l = 0;
    const __m512 top_v = _mm512_set1_ps(top);
    for (; l + 16 <= length; l += 16) {
      __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(sj + l), top_v));
      _mm512_storeu_ps(sj + l, e);
      total += _mm512_reduce_add_ps(e);
    }
    if (l < length) {
      __mmask16 mask = static_cast<__mmask16>((1u << (length - l)) - 1u);
      __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, sj + l), top_v));
      _mm512_mask_storeu_ps(sj + l, mask, e);
      total += _mm512_mask_reduce_add_ps(mask, e);
    }
    const float inv = 1.0f / total;
    float* aj = acc + j * dim;
    for (int64_t c = 0; c < chunks; ++c) _mm512_storeu_ps(aj + c * 16, _mm512_setzero_ps());
    for (int64_t l2 = 0; l2 < length; ++l2) {
      if (sj[l2] == 0.0f) continue;  // masked keys (exp(-inf) = 0)
      const __m512 p = _mm512_set1_ps(sj[l2] * inv);
      for (int64_t c = 0; c < chunks; ++c)
        _mm512_storeu_ps(aj + c * 16, _mm512_fmadd_ps(p, load_bf16x16(values + l2 * dim + c * 16),
                                                      _mm512_loadu_ps(aj + c * 16)));
    }
    round_to_bf16(aj, dim, out + j * dim);
  }
}

// embeds [N, H] bf16: this step's input tokens' embeddings. cos, sin [N, D] float32.
// keys, values [L, N, KV, T, D] bf16: positions < column filled; this step writes column.
// key_mask [N, T] bool, or empty where no position is masked. weights: per layer
// qkv, o, gate_up, down (vnni), then the LM head; biases likewise (empty: none);
// norms: per layer input and post-attention norm weights (float32), then the final one.
// Returns the logits [N, V] float32.
at::Tensor llama_decode_step(const at::Tensor& embeds, const at::Tensor& cos, const at::Tensor& sin,
                             at::Tensor keys, at::Tensor values, const at::Tensor& key_mask,
                             int64_t column, at::TensorList weights, at::TensorList biases,
                             at::TensorList norms, int64_t heads, int64_t kv_heads, int64_t inner,
                             int64_t vocab, double eps, double scaling) {
  const int64_t layers = keys.size(0);
  Shapes s{embeds.size(0), embeds.size(1), heads, kv_heads, keys.size(4), inner, vocab, keys.size(3)};
  TORCH_CHECK(embeds.scalar_type() == at::kBFloat16 && embeds.is_contiguous(), "embeds: bf16 [N, H]");
  TORCH_CHECK(keys.scalar_type() == at::kBFloat16 && keys.is_contiguous() && values.sizes() == keys.sizes() &&
                  values.is_contiguous() && keys.size(1) == s.rows && keys.size(2) == kv_heads,
              "keys, values: contiguous bf16 [L, N, KV, T, D]");
  TORCH_CHECK(s.dim % 16 == 0 && heads % kv_heads == 0 && s.hidden % 16 == 0 && inner % 16 == 0,
              "the head dimension, hidden and intermediate sizes must be multiples of 16, "
              "and heads a multiple of kv_heads");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && cos.is_contiguous() && sin.is_contiguous() &&
                  cos.size(0) == s.rows && cos.size(1) == s.dim && sin.sizes() == cos.sizes(),
              "cos, sin: contiguous float32 [N, D]");
  TORCH_CHECK(column >= 0 && column < s.capacity, "column ", column, " outside the cache");
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == 4 * layers + 1 && biases.size() == weights.size() &&
                  static_cast<int64_t>(norms.size()) == 2 * layers + 1,
              "weights/biases: 4 per layer + the LM head; norms: 2 per layer + the final norm");
  const uint8_t* mask = nullptr;
  if (key_mask.numel()) {
    TORCH_CHECK(key_mask.scalar_type() == at::kBool && key_mask.is_contiguous() &&
                    key_mask.size(0) == s.rows && key_mask.size(1) == s.capacity,
                "key_mask: contiguous bool [N, T]");
    mask = reinterpret_cast<const uint8_t*>(key_mask.data_ptr());
  }
  const int64_t n = s.rows, hidden = s.hidden, dim = s.dim, half = dim / 2;
  const int64_t qkv_width = (heads + 2 * kv_heads) * dim, group = heads / kv_heads;
  const int64_t length = column + 1;
  const auto f32 = embeds.options().dtype(at::kFloat);
  at::Tensor h = embeds.to(at::kFloat);  // the residual stream, float32
  at::Tensor normed = at::empty({n, std::max(hidden, inner)}, embeds.options());
  at::Tensor qkv = at::empty({n, qkv_width}, f32);
  at::Tensor attn = at::empty({n, heads * dim}, embeds.options());
  at::Tensor delta = at::empty({n, std::max(hidden, 2 * inner)}, f32);
  at::Tensor scores = at::empty({n * kv_heads, group * length}, f32);
  at::Tensor acc = at::empty({n * kv_heads, group * dim}, f32);
  float* hp = h.data_ptr<float>();
  bf16_t* np = reinterpret_cast<bf16_t*>(normed.data_ptr());
  float* qkvp = qkv.data_ptr<float>();
  bf16_t* ap = reinterpret_cast<bf16_t*>(attn.data_ptr());
  float* dp = delta.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  auto w = [&](int64_t i) { return reinterpret_cast<const bf16_t*>(weights[i].data_ptr()); };
  auto b = [&](int64_t i, int64_t width) { return bias_ptr(biases[i], width, "llama_decode_step"); };
  const int64_t capacity = s.capacity;
  for (int64_t layer = 0; layer < layers; ++layer) {
    check_packed(weights[4 * layer], hidden, qkv_width, "qkv");
    check_packed(weights[4 * layer + 1], heads * dim, hidden, "o");
    check_packed(weights[4 * layer + 2], hidden, 2 * inner, "gate_up");
    check_packed(weights[4 * layer + 3], inner, hidden, "down");
    rms_norm_rows(hp, n, hidden, norms[2 * layer].data_ptr<float>(), static_cast<float>(eps), np);
    gemm(np, n, hidden, w(4 * layer), qkv_width, b(4 * layer, qkv_width), qkvp, qkv_width);
    bf16_t* layer_keys = reinterpret_cast<bf16_t*>(keys.data_ptr()) + layer * n * kv_heads * capacity * dim;
    bf16_t* layer_values = reinterpret_cast<bf16_t*>(values.data_ptr()) + layer * n * kv_heads * capacity * dim;
    // Rotary embedding on every query and key head (q·cos + rotate_half(q)·sin), then
    // this position's key and value into the cache.
    for (int64_t r = 0; r < n; ++r) {
      const float* c = cp + r * dim;
      const float* si = sp + r * dim;
      for (int64_t head = 0; head < heads + kv_heads; ++head) {
        float* x = qkvp + r * qkv_width + head * dim;
        for (int64_t i = 0; i < half; i += 16) {
          const __mmask16 m = half - i >= 16 ? static_cast<__mmask16>(0xffff)
                                             : static_cast<__mmask16>((1u << (half - i)) - 1u);
          const __m512 lo = _mm512_maskz_loadu_ps(m, x + i), hi = _mm512_maskz_loadu_ps(m, x + i + half);
          _mm512_mask_storeu_ps(x + i, m, _mm512_fmsub_ps(lo, _mm512_maskz_loadu_ps(m, c + i),
                                                          _mm512_mul_ps(hi, _mm512_maskz_loadu_ps(m, si + i))));
          _mm512_mask_storeu_ps(x + i + half, m,
                                _mm512_fmadd_ps(hi, _mm512_maskz_loadu_ps(m, c + i + half),
                                                _mm512_mul_ps(lo, _mm512_maskz_loadu_ps(m, si + i + half))));
        }
      }
      for (int64_t g = 0; g < kv_heads; ++g) {
        round_to_bf16(qkvp + r * qkv_width + (heads + g) * dim, dim,
                      layer_keys + ((r * kv_heads + g) * capacity + column) * dim);
        round_to_bf16(qkvp + r * qkv_width + (heads + kv_heads + g) * dim, dim,
                      layer_values + ((r * kv_heads + g) * capacity + column) * dim);
      }
    }
    at::parallel_for(0, n * kv_heads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t r = item / kv_heads, g = item % kv_heads;
        attend(s, qkvp + r * qkv_width + g * group * dim,
               layer_keys + (r * kv_heads + g) * capacity * dim,
               layer_values + (r * kv_heads + g) * capacity * dim,
               mask ? mask + r * capacity : nullptr, length, static_cast<float>(scaling),
               scores.data_ptr<float>() + item * group * length,
               acc.data_ptr<float>() + item * group * dim, ap + r * heads * dim + g * group * dim);
      }
    });
    gemm(ap, n, heads * dim, w(4 * layer + 1), hidden, b(4 * layer + 1, hidden), dp, hidden);
    add_into(hp, dp, n * hidden);
    rms_norm_rows(hp, n, hidden, norms[2 * layer + 1].data_ptr<float>(), static_cast<float>(eps), np);
    gemm(np, n, hidden, w(4 * layer + 2), 2 * inner, b(4 * layer + 2, 2 * inner), dp, 2 * inner);
    // SiLU(gate) · up, rounded to bf16 as the down projection's input.
    for (int64_t r = 0; r < n; ++r) {
      const float* gate = dp + r * 2 * inner;
      const float* up = gate + inner;
      bf16_t* out = np + r * inner;
      for (int64_t i = 0; i < inner; i += 16) {
        const __m512 g = _mm512_loadu_ps(gate + i);
        const __m512 silu = _mm512_div_ps(
            g, _mm512_add_ps(_mm512_set1_ps(1.0f), exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        store_bf16x16(out + i, _mm512_mul_ps(silu, _mm512_loadu_ps(up + i)));
      }
    }
    gemm(np, n, inner, w(4 * layer + 3), hidden, b(4 * layer + 3, hidden), dp, hidden);
    add_into(hp, dp, n * hidden);
  }
  rms_norm_rows(hp, n, hidden, norms[2 * layers].data_ptr<float>(), static_cast<float>(eps), np);
  check_packed(weights[4 * layers], hidden, vocab, "lm_head");
  at::Tensor logits = at::empty({n, vocab}, f32);
  gemm(np, n, hidden, w(4 * layers), vocab, b(4 * layers, vocab), logits.data_ptr<float>(), vocab);
  return logits;
}

}  // namespace

TORCH_LIBRARY(grao_cpu, m) {
  m.def("vnni_linear(Tensor x, Tensor packed, Tensor bias, int n) -> Tensor");
  m.def("pack_vnni_(Tensor(a!) out, Tensor[] sources) -> ()");
  m.def("llama_decode_step(Tensor embeds, Tensor cos, Tensor sin, Tensor(a!) keys, Tensor(b!) values, "
        "Tensor key_mask, int column, Tensor[] weights, Tensor[] biases, Tensor[] norms, int heads, "
        "int kv_heads, int inner, int vocab, float eps, float scaling) -> Tensor");
}

TORCH_LIBRARY_IMPL(grao_cpu, CPU, m) {
  m.impl("vnni_linear", vnni_linear);
  m.impl("pack_vnni_", pack_vnni_);
  m.impl("llama_decode_step", llama_decode_step);
}

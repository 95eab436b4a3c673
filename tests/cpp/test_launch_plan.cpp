// Host check of the CUDA kernels' launch planning (csrc/cuda/launch_plan.h), compiled with
// the system g++ by tests/test_launch_plan.py. It runs the very functions the kernels call
// for their offsets (the reductions' nchw_unit/nchw_batches/nhwc_thread/nhwc_batches and
// nchw_first/nhwc_first, the elementwise grid-stride batches and position(), the stage-2
// lanes, FastDiv) for every thread of every launch, over many shapes, the load widths the
// plan picks at 16-byte, 8-byte and element-size alignment (and NHWC with misaligned
// coefficients), both layouts, the unrolls of both reduction ops, elementwise batches of
// 1/2/4 vectors, SM counts 108 and 132, and chunk limits that force several chunks, and checks:
//   reductions   every element read exactly once, by a thread of its own (n, c) and segment;
//                every partial (n, s, c) of the (N, S, C) workspace written exactly once;
//                each partial's element count equal to segment_count(HW, L, s), the weight
//                the bn_stats finalize gives it (the backward finalize sums all S);
//                the bn_stats shift read from the segment's first pack / row;
//   elementwise  every element processed exactly once; a batch's vectors one grid stride
//                apart; the coefficient indices that position() yields for each element of
//                a vector (plane straddling in NCHW) equal the element's own (n, c) and c;
//                16-byte vectors only where elementwise_vec allows them;
//   stage 2      every (n, s) partial of a channel merged once, by a lane of sample n's group;
//   FastDiv      quotient and remainder equal / and % (divisors 1..4096, near powers of two).
// Exit status 0 when all hold; the first failure is printed.
#include "launch_plan.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using namespace resnet_fast::cuda;

namespace {

int64_t g_checks = 0;

[[noreturn]] void fail(const std::string& what, const ActivationInfo& info, int V, int sms) {
  std::fprintf(stderr, "FAIL %s: N=%lld C=%lld HW=%lld layout=%s V=%d sms=%d\n", what.c_str(),
               static_cast<long long>(info.N), static_cast<long long>(info.C), static_cast<long long>(info.HW),
               info.layout == Layout::NCHW ? "NCHW" : "NHWC", V, sms);
  std::exit(1);
}

#define CHECK(cond, what)                 \
  do {                                    \
    ++g_checks;                           \
    if (!(cond)) fail(what, info, V, sms); \
  } while (0)

// A plain divider with the interface of ATen's IntDivider.
struct Div {
  uint32_t d;
  struct DivMod {
    uint32_t div, mod;
  };
  DivMod divmod(uint32_t x) const { return {x / d, x % d}; }
  uint32_t div(uint32_t x) const { return x / d; }
  uint32_t mod(uint32_t x) const { return x % d; }
};

// Element (n, c, hw)'s flat index and back.
struct Coord {
  int64_t n, c, hw;
};
Coord coord_of(const ActivationInfo& info, int64_t i) {
  if (info.layout == Layout::NCHW) return {i / (info.C * info.HW), (i / info.HW) % info.C, i % info.HW};
  return {i / (info.HW * info.C), i % info.C, (i / info.C) % info.HW};
}

// ----------------------------------------------------------------------------- reductions
// PU, PRU: the unrolls the plan is computed with (backward_reduce plans with its run-time-flag
// Op's rows per batch, 1, and runs the per-combination NHWC kernels with 1 or 2).
template <int V, int U, int RU, int PU = U, int PRU = RU>
void check_reduce(const ActivationInfo& info, int vec, int align, int coef_align, int sms, int64_t max_chunk) {
  const ReducePlan plan = plan_reduce(info, vec, PU, PRU, align, coef_align, sms);
  CHECK(plan.V == V, "dispatch width");
  CHECK(V == 1 || (V * (16 / vec)) <= align, "loads no wider than the pointers' alignment");
  CHECK(V == 1 || (info.layout == Layout::NCHW ? info.HW : info.C) % V == 0, "runs a multiple of V");
  CHECK((plan.G & (plan.G - 1)) == 0 && plan.G >= 1 && plan.G <= kWarpSize, "G a power of two <= 32");
  CHECK(plan.S >= 1 && plan.L >= 1, "S, L positive");
  CHECK(static_cast<int64_t>(plan.S - 1) * plan.L < info.HW && static_cast<int64_t>(plan.S) * plan.L >= info.HW,
        "S segments of L cover HW, none empty");
  if (info.layout == Layout::NCHW) CHECK(plan.L % V == 0, "NCHW segment length a multiple of V");
  const int64_t numel = info.numel();
  const int64_t parts = info.N * plan.S * info.C;
  std::vector<uint8_t> read(numel, 0);
  std::vector<int> written(parts, 0);
  std::vector<int64_t> counted(parts, 0);
  int chunks = 0;
  for_each_chunk_of(info, max_chunk, [&](int64_t n0, int64_t n_chunk) {
    ++chunks;
    CHECK(n_chunk * info.C * info.HW <= max_chunk, "chunk within the element limit");
    const int64_t elem0 = sample_offset(info, n0);
    const int64_t part0 = partial_offset(info, plan.S, n0);
    const ReduceLaunch l = reduce_launch(plan, info, n_chunk);
    const int64_t chunk_numel = n_chunk * info.C * info.HW;
    auto mark = [&](int64_t local, int64_t n_expect, int64_t c_lo, int64_t c_hi, int s, int64_t part) {
      CHECK(local >= 0 && local < chunk_numel, "read inside the chunk");
      const int64_t i = elem0 + local;
      const Coord at = coord_of(info, i);
      CHECK(at.n == n0 + n_expect && at.c >= c_lo && at.c < c_hi, "read by the thread of its (n, c)");
      CHECK(at.hw / plan.L == s, "read by the thread of its segment");
      CHECK(read[i] == 0, "element read once");
      read[i] = 1;
      counted[part0 + part + (at.c - c_lo)] += 1;
    };
    if (plan.layout == Layout::NCHW) {
      for (int64_t bx = 0; bx < l.blocks_x; ++bx) {
        for (int tid = 0; tid < kThreads; ++tid) {
          const NchwUnit u = nchw_unit(l.g, static_cast<int>(bx), tid);
          if (!u.active) continue;
          const int part = nchw_partial(l.g, u);
          {  // the shift's pack: the segment's first V elements, of the unit's plane
            const Coord at = coord_of(info, elem0 + nchw_first(l.g, u));
            CHECK(at.n == n0 + u.n && at.c == u.c && at.hw == int64_t(u.s) * plan.L, "nchw_first");
            CHECK(nchw_first(l.g, u) % V == 0 && at.hw + V <= info.HW, "nchw_first pack aligned, in the plane");
          }
          nchw_batches<V, U>(l.g, u, [&](const uint32_t (&off)[U], int k) {
            CHECK(k >= 1 && k <= U, "batch holds 1..U packs");
            for (int q = 0; q < k; ++q) {
              CHECK(off[q] % V == 0, "pack aligned to V elements");
              for (int j = 0; j < V; ++j) mark(off[q] + j, u.n, u.c, u.c + 1, u.s, part);
            }
          });
          if (u.lane == 0) {
            CHECK(part >= 0 && part < n_chunk * plan.S * info.C, "partial inside the chunk's workspace");
            written[part0 + part] += 1;
          }
        }
      }
    } else {
      for (int64_t bx = 0; bx < l.blocks_x; ++bx) {
        for (int64_t by = 0; by < l.blocks_y; ++by) {
          for (int tid = 0; tid < kThreads; ++tid) {
            const NhwcThread t = nhwc_thread(l.g, static_cast<int>(bx), static_cast<int>(by), tid);
            if (!t.active) continue;
            const int part = nhwc_partial(l.g, t, V);
            {  // the shift's rows: the segment's first 4 (its last repeated), the thread's channels
              const Coord at = coord_of(info, elem0 + nhwc_first<V>(l.g, t));
              CHECK(at.n == n0 + t.n && at.c == int64_t(t.cv) * V && at.hw == int64_t(t.s) * plan.L, "nhwc_first");
              const int rows = static_cast<int>(segment_count(l.g.HW, l.g.L, t.s));
              for (int i = 1; i < 4; ++i) {
                const uint32_t off = nhwc_first<V>(l.g, t) + static_cast<uint32_t>(i < rows ? i : rows - 1) * l.g.C;
                const Coord r = coord_of(info, elem0 + off);
                CHECK(off < chunk_numel && r.n == at.n && r.c == at.c && r.hw / plan.L == t.s, "shift rows in the segment");
              }
            }
            nhwc_batches<V, RU>(l.g, t, [&](const uint32_t (&off)[RU], int k) {
              CHECK(k >= 1 && k <= RU, "batch holds 1..U rows");
              for (int q = 0; q < k; ++q) {
                CHECK(off[q] % V == 0, "row vector aligned to V elements");
                for (int j = 0; j < V; ++j) mark(off[q] + j, t.n, int64_t(t.cv) * V, int64_t(t.cv) * V + V, t.s, part);
              }
            });
            if (t.ty == 0) {
              for (int j = 0; j < V; ++j) {
                CHECK(part + j < n_chunk * plan.S * info.C, "partial inside the chunk's workspace");
                written[part0 + part + j] += 1;
              }
            }
          }
        }
      }
    }
  });
  CHECK(chunks == ceil_div(info.N, chunk_samples(info, max_chunk)), "chunk count");
  for (int64_t i = 0; i < numel; ++i) CHECK(read[i] == 1, "every element read");
  for (int64_t p = 0; p < parts; ++p) {
    CHECK(written[p] == 1, "every partial written once");
    const int s = static_cast<int>((p / info.C) % plan.S);
    CHECK(counted[p] == segment_count(info.HW, plan.L, s), "partial's count is the finalize's segment_count");
  }
}

// ----------------------------------------------------------------------------- elementwise
template <int V, int U, Layout L>
void check_elementwise_unrolled(const ActivationInfo& info, int sms, int64_t max_chunk) {
  std::vector<uint8_t> done(info.numel(), 0);
  const Div div_c{static_cast<uint32_t>(info.C)}, div_hw{static_cast<uint32_t>(info.HW)};
  for_each_chunk_of(info, max_chunk, [&](int64_t n0, int64_t n_chunk) {
    const int64_t elem0 = sample_offset(info, n0);
    const int64_t nc0 = nc_offset(info, n0);  // the chunk's coefficient rows start here
    const uint32_t numel = static_cast<uint32_t>(n_chunk * info.C * info.HW);
    const unsigned blocks = elementwise_blocks(numel, V, sms);
    CHECK(blocks >= 1 && blocks <= static_cast<unsigned>(sms) * 16, "grid size");
    const uint32_t stride = blocks * kThreads;
    for (uint32_t first = 0; first < stride; ++first) {
      int calls = 0, singles = 0;
      elementwise_thread<V, U>(numel, first, stride, [&](const uint32_t (&i0s)[U], auto kc, auto w) {
       constexpr int K = decltype(kc)::value;
       constexpr int W = decltype(w)::value;
       ++calls;
       CHECK(K == U || K == 1, "a batch holds U vectors or one");
       if (K == 1) ++singles;
       CHECK(K == U || singles <= U, "at most U - 1 single vectors and the scalar tail after the batches");
       for (int k = 0; k < K; ++k) {
        const uint32_t i0 = i0s[k];
        if (k > 0) CHECK(i0 == i0s[k - 1] + stride * V, "a batch's vectors one grid stride apart");
        const Pos pos = position<W, L>(i0, div_c.d, div_hw.d, div_c, div_hw);
        CHECK(pos.split >= 1, "split >= 1");
        if (L == Layout::NHWC) CHECK(pos.c0 + W <= info.C, "NHWC vector inside one row");
        for (int j = 0; j < W; ++j) {
          const int64_t local = static_cast<int64_t>(i0) + j;
          CHECK(local < numel, "element inside the chunk");
          const int64_t i = elem0 + local;
          CHECK(done[i] == 0, "element processed once");
          done[i] = 1;
          const Coord at = coord_of(info, i);
          // what gather_nc / gather_c (elementwise.cuh) index for element j
          int64_t nc, c;
          if (L == Layout::NCHW) {
            const bool next = j >= static_cast<int>(pos.split);
            nc = pos.nc0 + (next ? 1 : 0);
            c = next ? pos.c1 : pos.c0;
          } else {
            nc = pos.nc0 + j;
            c = pos.c0 + j;
          }
          CHECK(nc0 + nc == at.n * info.C + at.c, "per-(n, c) coefficient index");
          CHECK(c == at.c, "per-channel coefficient index");
        }
       }
      });
      (void)calls;
    }
  });
  for (int64_t i = 0; i < info.numel(); ++i) CHECK(done[i] == 1, "every element processed");
}

template <int V, Layout L>
void check_elementwise(const ActivationInfo& info, int sms, int64_t max_chunk) {
  // the ops' kUnroll: scale_shift_act 2, backward_apply 2; 1 and 4 cover the batching itself
  check_elementwise_unrolled<V, 1, L>(info, sms, max_chunk);
  check_elementwise_unrolled<V, 2, L>(info, sms, max_chunk);
  check_elementwise_unrolled<V, 4, L>(info, sms, max_chunk);
}

template <int V>
void check_all_widths(const ActivationInfo& info, int vec, int align, int coef_align, int sms, int64_t max_chunk) {
  // the two reduction ops: bn_stats (kUnroll 4, kRowUnroll 4), backward reduce (2, 1 or 2)
  check_reduce<V, 4, 4>(info, vec, align, coef_align, sms, max_chunk);
  check_reduce<V, 2, 1>(info, vec, align, coef_align, sms, max_chunk);
  check_reduce<V, 2, 2, 2, 1>(info, vec, align, coef_align, sms, max_chunk);
}

// The reductions at one alignment of the pointers: the plan picks V (16-byte, 8-byte or
// scalar loads); the kernels of that width are simulated.
void check_reduce_alignment(const ActivationInfo& info, int vec, int align, int coef_align, int sms,
                            int64_t max_chunk) {
  const int V = plan_reduce(info, vec, 4, 4, align, coef_align, sms).V;
  if (V == 8) check_all_widths<8>(info, vec, align, coef_align, sms, max_chunk);
  if (V == 4) check_all_widths<4>(info, vec, align, coef_align, sms, max_chunk);
  if (V == 2) check_all_widths<2>(info, vec, align, coef_align, sms, max_chunk);
  if (V == 1) check_all_widths<1>(info, vec, align, coef_align, sms, max_chunk);
}

void check_shape(ActivationInfo info, int sms, int64_t max_chunk) {
  constexpr int kVecs[] = {8, 4, 2};  // half/bfloat16, float, double
  for (int vec : kVecs) {
    const int elem = 16 / vec;
    // 16-byte aligned, 8-byte aligned (8-byte loads at most), misaligned (scalar), and in
    // NHWC 16-byte activations with misaligned coefficients
    check_reduce_alignment(info, vec, 16, 16, sms, max_chunk);
    check_reduce_alignment(info, vec, 8, 16, sms, max_chunk);
    check_reduce_alignment(info, vec, elem, 16, sms, max_chunk);
    if (info.layout == Layout::NHWC) check_reduce_alignment(info, vec, 16, 4, sms, max_chunk);
    const bool ew = elementwise_vec_shape_ok(info, vec);
    {  // 16-byte vectors: aligned activations; coefficients aligned too only in NHWC
      const int V = vec;
      CHECK(elementwise_vec(info, vec, 16, 16) == ew, "elementwise_vec, all aligned");
      CHECK(!elementwise_vec(info, vec, 8, 16), "elementwise_vec, misaligned activations");
      CHECK(elementwise_vec(info, vec, 16, 4) == (ew && info.layout == Layout::NCHW),
            "elementwise_vec, misaligned coefficients: NCHW keeps 16-byte activation accesses");
    }
    if (info.layout == Layout::NCHW) {
      if (ew && vec == 8) check_elementwise<8, Layout::NCHW>(info, sms, max_chunk);
      if (ew && vec == 4) check_elementwise<4, Layout::NCHW>(info, sms, max_chunk);
      if (ew && vec == 2) check_elementwise<2, Layout::NCHW>(info, sms, max_chunk);
      check_elementwise<1, Layout::NCHW>(info, sms, max_chunk);
    } else {
      if (ew && vec == 8) check_elementwise<8, Layout::NHWC>(info, sms, max_chunk);
      if (ew && vec == 4) check_elementwise<4, Layout::NHWC>(info, sms, max_chunk);
      if (ew && vec == 2) check_elementwise<2, Layout::NHWC>(info, sms, max_chunk);
      check_elementwise<1, Layout::NHWC>(info, sms, max_chunk);
    }
  }
}

// FastDiv (the reductions' prologue) against / and %: every divisor up to 4096, divisors
// near powers of two and large ones, dividends near 0, near multiples and near 2^31.
void check_fastdiv() {
  const ActivationInfo info{Layout::NCHW, 0, 0, 0};
  const int V = 1, sms = 0;
  std::vector<uint32_t> divisors;
  for (uint32_t d = 1; d <= 4096; ++d) divisors.push_back(d);
  for (int k = 12; k < 31; ++k) {
    for (int64_t e = -3; e <= 3; ++e) divisors.push_back(static_cast<uint32_t>((int64_t(1) << k) + e));
  }
  divisors.push_back(2147483647u);
  uint64_t lcg = 12345;
  for (uint32_t d : divisors) {
    const FastDiv f(d);
    auto one = [&](uint32_t x) {
      const FastDiv::DivMod q = f.divmod(x);
      CHECK(q.div == x / d && q.mod == x % d, "FastDiv(" + std::to_string(d) + ") of " + std::to_string(x));
    };
    for (uint32_t x = 0; x < 600; ++x) one(x);
    for (uint32_t m = 1; m < 64; ++m) {
      const uint64_t base = uint64_t(d) * m * 997;
      for (int64_t e = -1; e <= 1; ++e) {
        const int64_t x = static_cast<int64_t>(base) + e;
        if (x >= 0 && x < (int64_t(1) << 31)) one(static_cast<uint32_t>(x));
      }
    }
    for (uint32_t x = 2147483647u - 300; x <= 2147483647u - 1; ++x) one(x);
    for (int i = 0; i < 200; ++i) {
      lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
      one(static_cast<uint32_t>(lcg >> 33));  // < 2^31
    }
  }
}

// Stage 2: every (n, s) partial of a channel merged exactly once, by a lane of sample n's
// group, each sample's group P rows of one pass whose lane 0 writes the sample; P a power of
// two dividing 32; one pass when N < 32; P = 1 (the plain per-sample loop) when N >= 32.
void check_finalize_lanes() {
  const ActivationInfo info{Layout::NCHW, 0, 0, 0};
  const int V = 1, sms = 0;
  const int64_t Ns[] = {1, 2, 3, 5, 7, 8, 16, 31, 32, 33, 64, 100, 256};
  for (int64_t N : Ns) {
    for (int S = 1; S <= 200; S = S < 12 ? S + 1 : S * 2 - 3) {
      const int log2P = finalize_log2_lanes(N, S);
      const int P = 1 << log2P;
      CHECK(P >= 1 && P <= S && P * std::min<int64_t>(N, 32) <= 32, "P bounds");
      CHECK(finalize_pass(log2P) * P == kFinalizeRows, "passes cover the rows");
      if (N >= 32) CHECK(P == 1, "P = 1 for N >= 32");
      std::vector<int> merged(N * S, 0), written(N, 0);
      int passes = 0;
      for (int64_t n0 = 0; n0 < N; n0 += finalize_pass(log2P)) {
        ++passes;
        for (int ty = 0; ty < kFinalizeRows; ++ty) {
          const int64_t n = finalize_sample(n0, ty, log2P);
          const int p = finalize_lane(ty, log2P);
          CHECK(n >= n0 && n < n0 + finalize_pass(log2P) && p < P && (ty >> log2P) == n - n0, "row -> (sample, lane)");
          if (n >= N) continue;
          int last = -1;
          finalize_segments(S, log2P, p, [&](int s) {
            CHECK(s > last && s % P == p, "a lane's segments in order, its own residue");
            last = s;
            merged[n * S + s] += 1;
          });
          if (p == 0) written[n] += 1;
        }
      }
      if (N < 32) CHECK(passes == 1, "one pass when N < 32");
      for (int64_t i = 0; i < N * S; ++i) CHECK(merged[i] == 1, "every (n, s) partial merged once");
      for (int64_t n = 0; n < N; ++n) CHECK(written[n] == 1, "every sample written once");
    }
  }
}

}  // namespace

int main() {
  check_fastdiv();
  check_finalize_lanes();
  // (N, C, HW): ResNet stage shapes at small batch, 7x7 / 14x14 / 3x3 planes (HW % V != 0),
  // one-element planes, channel counts that are not multiples of V or of a warp (33, 264),
  // long rows, and N = 1 (many segments).
  const int64_t shapes[][3] = {
      {1, 1, 1},     {1, 3, 5},      {2, 3, 4},       {3, 5, 6},      {1, 8, 9},      {2, 64, 49},
      {4, 64, 196},  {1, 64, 3136},  {2, 256, 196},   {1, 2048, 49},  {3, 2048, 1},   {2, 33, 196},
      {5, 264, 49},  {1, 33, 3136},  {8, 16, 784},    {1, 3, 12544},  {2, 512, 7},    {1, 1000, 1},
      {7, 96, 25},   {1, 128, 1024}, {64, 64, 49},    {3, 40, 121},   {1, 24, 50176}, {16, 8, 3},
  };
  const int kSms[] = {108, 132};
  int runs = 0;
  for (const auto& s : shapes) {
    for (Layout layout : {Layout::NCHW, Layout::NHWC}) {
      for (int sms : kSms) {
        const ActivationInfo info{layout, s[0], s[1], s[2]};
        check_shape(info, sms, kMaxChunkElements);
        // a chunk limit of about two samples: several chunks, their element and partial offsets
        if (info.N > 1) check_shape(info, sms, std::max<int64_t>(2 * info.C * info.HW + 1, 1));
        ++runs;
      }
    }
  }
  // the real limit's chunking, without simulating 2^31 elements: counts and bounds only
  {
    const ActivationInfo info{Layout::NHWC, 700, 64, 112 * 112};  // 5.6e8 elements per 700 samples
    const int V = 1, sms = 0;
    const ActivationInfo big{Layout::NHWC, 3000, 64, 112 * 112};  // 2.4e9 elements: 3 chunks
    int64_t covered = 0, chunks = 0;
    for_each_chunk_of(big, kMaxChunkElements, [&](int64_t n0, int64_t n) {
      CHECK(n0 == covered && n * big.C * big.HW <= kMaxChunkElements, "contiguous chunks within the limit");
      CHECK(static_cast<uint64_t>(n * big.C * big.HW) + (uint64_t(1) << 20) < (uint64_t(1) << 32),
            "32-bit offsets with the unroll margin");
      covered += n;
      ++chunks;
    });
    CHECK(covered == big.N && chunks == 2, "2^31+ elements in 2 chunks");
    CHECK(chunk_samples(ActivationInfo{Layout::NCHW, 1, 1 << 16, 1 << 16}) == 0, "an over-large sample is refused");
    (void)info;
  }
  std::printf("launch plan OK: %d shape/layout/SM runs, %lld checks\n", runs, static_cast<long long>(g_checks));
  return 0;
}

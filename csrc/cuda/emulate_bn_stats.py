"""CPU emulation of the CUDA bn_stats (csrc/cuda/bn_stats.cu) in its float32 order, against
tests/test_cuda_primitives.py::test_bn_stats' tolerance |got - ref| <= 64 * eps * scale.

    python csrc/cuda/emulate_bn_stats.py [--outlier]

Stage 1 (shifted sums per lane / row thread, pairwise batch sums, xor-shuffle or tree merge,
one division per segment) and stage 2 (Chan merges: P lanes per sample, the 32-row tree) in
float32 torch arithmetic, the plan (V, G, L, S) transcribed from launch_plan.h's plan_reduce
for 132 SMs (keep the two in step when the plan changes). Prints error / tolerance per shape;
--outlier puts a 98-sigma value first in every plane. Slow (Python loops): minutes.
"""
import math, sys, torch
torch.manual_seed(0)
f32 = torch.float32

def pow2_floor(x):
    p = 1
    while p * 2 <= x: p *= 2
    return p
def pow2_ceil(x):
    p = 1
    while p < x: p *= 2
    return p
def cdiv(a, b): return -(-a // b)

def plan(N, C, HW, layout, vec, U, RU, sms=132):
    if layout == "nchw":
        V = vec if HW % vec == 0 else (vec // 2 if vec // 2 >= 2 and HW % (vec // 2) == 0 else 1)
        G = min(max(pow2_floor(HW // (2 * U * V)), 1), 32)
        warps = cdiv(N * C, 32 // G); S = 1
        if warps < sms * 64: S = min(cdiv(sms * 64, warps), max(1, HW // (G * V * U * 2)))
        L = cdiv(cdiv(HW, S), V) * V
        return V, G, L, cdiv(HW, L)
    V = vec if C % vec == 0 else (vec // 2 if vec // 2 >= 2 and C % (vec // 2) == 0 else 1)
    cvecs = C // V; G = min(max(pow2_ceil(cvecs), 1), 32); TY = 256 // G
    blocks = N * cdiv(cvecs, G); S = 1
    if blocks < sms * 8: S = min(cdiv(sms * 8, blocks), max(1, HW // (TY * RU * 2)))
    L = cdiv(HW, S)
    return V, G, L, cdiv(HW, L)

def pairwise(xs):
    xs = list(xs)
    w = len(xs) // 2
    while w > 0:
        for u in range(w): xs[u] = xs[u] + xs[u + w]
        w //= 2
    return xs[0]

def seg_nchw(x, V, G, U):
    """x: (P, L) float32 planes' segments (all of length L). -> mean, m2 per row (float32)."""
    P, L = x.shape
    K = x[:, :V].sum(1, dtype=f32) if V > 1 else x[:, 0].clone()
    if V > 1:  # pairwise over V
        K = pairwise([x[:, j] for j in range(V)]) * (1.0 / V)
    s_l, q_l = [], []
    step = G * V
    for lane in range(G):
        s = torch.zeros(P, dtype=f32); q = torch.zeros(P, dtype=f32)
        e = lane * V
        while e < L:
            ps, pq = [], []
            for u in range(U):
                ei = e + u * step
                if ei < L:
                    d0 = x[:, ei] - K; a = d0.clone(); b = d0 * d0
                    for j in range(1, V):
                        d = x[:, ei + j] - K; a = a + d; b = b + d * d
                else:
                    a = torch.zeros(P, dtype=f32); b = torch.zeros(P, dtype=f32)
                ps.append(a); pq.append(b)
            s = s + pairwise(ps); q = q + pairwise(pq)
            e += step * U
        s_l.append(s); q_l.append(q)
    o = G // 2
    while o > 0:
        s_l = [s_l[i] + s_l[i ^ o] for i in range(G)]; q_l = [q_l[i] + q_l[i ^ o] for i in range(G)]
        o //= 2
    s, q = s_l[0], q_l[0]
    m = s / float(L)
    mean = K + m
    m2 = torch.clamp(q - s * m, min=0)
    return mean, m2

def chan(a, b):
    (na, ma, qa), (nb, mb, qb) = a, b
    n = na + nb
    r = torch.tensor(nb / n, dtype=f32); w = torch.tensor(na, dtype=f32) * r
    d = mb - ma
    return n, ma + d * r, qa + qb + d * d * w

def merge_segments(segs, S, N, C):
    """Stage 2 as the kernels order it (both layouts): P lanes per sample merge the S segments
    (lane l takes s = l, l + P, ...), a tree over the lanes, then the samples per channel in 32
    rows (row ty takes n = ty, ty + 32, ...) and a tree over the rows. Returns (mean, biased var,
    per-sample means)."""
    P = 1
    busy = min(max(N, 1), 32)
    while 2 * P <= S and 2 * P * busy <= 32: P *= 2
    samples = []
    for lane in range(P):
        acc = None
        for s in range(lane, S, P):
            acc = segs[s] if acc is None else chan(acc, segs[s])
        samples.append(acc)
    st = P // 2
    while st > 0:
        samples = [chan(samples[i], samples[i + st]) if i < st else samples[i] for i in range(len(samples))]
        st //= 2
    n, mean, m2 = samples[0]
    mean = mean.reshape(N, C); m2 = m2.reshape(N, C)
    rows = []
    for ty in range(32):
        acc = None
        for nn in range(ty, N, 32):
            item = (n, mean[nn], m2[nn])
            acc = item if acc is None else chan(acc, item)
        rows.append(acc)
    st = 16
    while st > 0:
        for ty in range(st):
            if rows[ty + st] is not None:
                rows[ty] = rows[ty + st] if rows[ty] is None else chan(rows[ty], rows[ty + st])
        st //= 2
    tn, tmean, tm2 = rows[0]
    return tmean, tm2 / tn, mean


def emulate_nchw(y, vec):
    N, C, H, W = y.shape; HW = H * W
    V, G, L, S = plan(N, C, HW, "nchw", vec, 4, 4)
    x = y.float().reshape(N * C, HW)
    segs = []
    for s in range(S):
        a, b = s * L, min(HW, s * L + L)
        segs.append((b - a, *seg_nchw(x[:, a:b].contiguous(), V, G, 4)))
    return merge_segments(segs, S, N, C)

def check(shape, dtype, offset=2.0, seed=7):
    g = torch.Generator().manual_seed(seed)
    y = (torch.randn(shape, generator=g) + offset).to(dtype)
    vec = 16 // y.element_size()
    mean, var, smean = emulate_nchw(y, vec)
    y64 = y.double()
    ref_var, ref_mean = torch.var_mean(y64, dim=(0, 2, 3), correction=0)
    eps = torch.finfo(f32).eps
    tol_var = 64 * eps * (ref_var + ref_mean.abs() * ref_var.sqrt())
    tol_mean = 64 * eps * y64.abs().mean(dim=(0, 2, 3))
    ev = ((var.double() - ref_var).abs() / tol_var).max().item()
    em = ((mean.double() - ref_mean).abs() / tol_mean).max().item()
    es = ((smean.double() - y64.mean(dim=(2, 3))).abs() / (64 * eps * y64.abs().mean(dim=(2, 3)))).max().item()
    print(f"{str(shape):22s} {str(dtype):15s} plan {plan(shape[0], shape[1], shape[2]*shape[3], 'nchw', vec, 4, 4)} "
          f"err/tol: var {ev:.3f} mean {em:.3f} sample_mean {es:.3f}", flush=True)
    return max(ev, em, es)

def _main():
    shapes = [(2, 3, 5, 7), (3, 5, 1, 1), (2, 8, 7, 7), (1, 1, 1, 1), (2, 13, 9, 11), (3, 24, 14, 14), (1, 6, 33, 2),
              (2, 64, 112, 112), (4, 256, 56, 56), (4, 512, 28, 28), (4, 1024, 14, 14), (8, 2048, 7, 7)]
    worst = 0
    for shape in shapes:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            worst = max(worst, check(shape, dtype), check_nhwc(shape, dtype))
    print("worst err/tol", worst)


def seg_nhwc(x, TY, U=4):
    """x: (P, L) float32: P (n, c) channels' L segment rows. Thread ty: rows ty, ty+TY, ... in batches
    of U rows; shift K = row 0; rows merge in the tree_reduce_y order."""
    P, L = x.shape
    K = x[:, 0].clone()
    for i in range(1, 4):
        K = K + x[:, min(i, L - 1)]
    K = K * 0.25
    th_s, th_q = [], []
    for ty in range(TY):
        s = torch.zeros(P, dtype=f32); q = torch.zeros(P, dtype=f32)
        r = ty
        while r < L:
            ps, pq = [], []
            for u in range(U):
                ri = r + u * TY
                d = (x[:, ri] - K) if ri < L else torch.zeros(P, dtype=f32)
                ps.append(d); pq.append(d * d)
            s = s + pairwise(ps); q = q + pairwise(pq)
            r += TY * U
        th_s.append(s); th_q.append(q)
    st = TY // 2
    while st > 0:
        for ty in range(st):
            th_s[ty] = th_s[ty] + th_s[ty + st]; th_q[ty] = th_q[ty] + th_q[ty + st]
        st //= 2
    s, q = th_s[0], th_q[0]
    m = s / float(L)
    return K + m, torch.clamp(q - s * m, min=0)


def emulate_nhwc(y, vec):
    N, C, H, W = y.shape; HW = H * W
    V, G, L, S = plan(N, C, HW, "nhwc", vec, 4, 4)
    TY = 256 // G
    x = y.float().permute(0, 1, 2, 3).reshape(N * C, HW)
    segs = []
    for s in range(S):
        a, b = s * L, min(HW, s * L + L)
        segs.append((b - a, *seg_nhwc(x[:, a:b].contiguous(), TY)))
    return merge_segments(segs, S, N, C)


def check_nhwc(shape, dtype, offset=2.0, seed=7):
    g = torch.Generator().manual_seed(seed)
    y = (torch.randn(shape, generator=g) + offset).to(dtype)
    vec = 16 // y.element_size()
    mean, var, smean = emulate_nhwc(y, vec)
    y64 = y.double()
    ref_var, ref_mean = torch.var_mean(y64, dim=(0, 2, 3), correction=0)
    eps = torch.finfo(f32).eps
    ev = ((var.double() - ref_var).abs() / (64 * eps * (ref_var + ref_mean.abs() * ref_var.sqrt()))).max().item()
    em = ((mean.double() - ref_mean).abs() / (64 * eps * y64.abs().mean(dim=(0, 2, 3)))).max().item()
    es = ((smean.double() - y64.mean(dim=(2, 3))).abs() / (64 * eps * y64.abs().mean(dim=(2, 3)))).max().item()
    print(f"NHWC {str(shape):22s} {str(dtype):15s} plan {plan(shape[0], shape[1], shape[2]*shape[3], 'nhwc', vec, 4, 4)} "
          f"err/tol: var {ev:.3f} mean {em:.3f} sample_mean {es:.3f}", flush=True)
    return max(ev, em, es)


def _outlier():
    eps = torch.finfo(f32).eps
    for shape in [(4, 64, 56, 56), (8, 256, 7, 7), (4, 64, 14, 14)]:
        for dtype in (torch.float32, torch.float16):
            g = torch.Generator().manual_seed(1)
            y = torch.randn(shape, generator=g) + 2.0
            y[:, :, 0, 0] = 100.0
            y = y.to(dtype)
            rv, rm = torch.var_mean(y.double(), dim=(0, 2, 3), correction=0)
            for layout, fn in (("NCHW", emulate_nchw), ("NHWC", emulate_nhwc)):
                _, var, _ = fn(y, 16 // y.element_size())
                err = ((var.double() - rv).abs() / (64 * eps * (rv + rm.abs() * rv.sqrt()))).max().item()
                print(f"outlier {layout} {shape} {dtype}: var err/tol {err:.3f}", flush=True)


if __name__ == "__main__":
    _outlier() if "--outlier" in sys.argv else _main()

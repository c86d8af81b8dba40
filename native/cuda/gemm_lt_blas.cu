// cublaslt_gemm.h's GEMMs on cuBLASLt. Column-major view: Cᵀ[n, m] = opB'·opA', our B playing
// cuBLAS's A. Plans (descriptors, layouts, the chosen algorithm) are kept per shape, alignment and
// epilogue; a workspace per stream, since GEMMs on two streams may overlap.
#include <cublasLt.h>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include "common.cuh"
#include "cublaslt_gemm.h"
#include "runtime.h"

namespace lorakit {
namespace cuda {
namespace lt {
namespace {

constexpr size_t kWorkspace = size_t(32) << 20;

[[noreturn]] void blas_fail(cublasStatus_t s, const char* what) {
  std::string msg = std::string("cublasLt: ") + what + " failed with status " + std::to_string(int(s));
  if (s == CUBLAS_STATUS_ALLOC_FAILED) throw Error(ErrorKind::Range, msg + " (out of memory)");
  throw Error(ErrorKind::State, msg);
}
#define LK_BLAS(expr, what)                                       \
  do {                                                            \
    cublasStatus_t lk_s_ = (expr);                                \
    if (lk_s_ != CUBLAS_STATUS_SUCCESS) blas_fail(lk_s_, what);   \
  } while (0)

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::F16: return CUDA_R_16F;
    case DType::BF16: return CUDA_R_16BF;
    default: throw_type(std::string("cuda gemm: unsupported dtype ") + dtype_name(t));
  }
}

int alignment_of(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 256;
  while (al > 1 && a % al) al >>= 1;
  return al;
}



using PlanKey = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int, int, int, int, int, int, int>;

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo;
};

struct Blas {
  std::mutex mu;
  cublasLtHandle_t handle = nullptr;
  std::map<cudaStream_t, void*> workspaces;  // one per stream: GEMMs on two streams may overlap
  std::map<PlanKey, Plan> plans;
};

Blas& blas() {
  static Blas* b = new Blas();  // leaked on purpose: no teardown after the driver is gone
  return *b;
}

// LORAKIT_CUBLASLT_TRACE=1: one stderr line per new plan (shape, alignments, each candidate's time,
// the choice), to tell which algorithm a slow call runs.
bool trace_plans() {
  static const bool on = [] {
    const char* e = std::getenv("LORAKIT_CUBLASLT_TRACE");
    return e != nullptr && std::string(e) == "1";
  }();
  return on;
}

void trace_plan(const Gemm& g, const std::string& what) {
  std::fprintf(stderr, "cublasLt plan m %lld n %lld k %lld ta %d tb %d beta %d: %s\n", (long long)g.m, (long long)g.n, (long long)g.k,
               int(g.ta), int(g.tb), int(g.beta != 0.f), what.c_str());
}

// Times the heuristic's candidates once per shape (into a scratch output, so C is untouched)
// and keeps the fastest: the first-ranked algorithm is often not the fastest for skinny shapes.
// The choice is then fixed for the process, so repeated calls stay bitwise reproducible.
cublasLtMatmulAlgo_t fastest(Blas& b, Plan& p, const Gemm& g, const cublasLtMatmulHeuristicResult_t* res, int found,
                             cudaStream_t st, void* workspace) {
  size_t bytes = size_t(g.ldc) * size_t(g.m) * dtype_size(g.c);
  void* d = nullptr;
  if (cudaMalloc(&d, bytes) != cudaSuccess) {
    cudaGetLastError();
    return res[0].algo;
  }
  LK_CUDA(cudaMemsetAsync(d, 0, bytes, st), "cudaMemsetAsync");
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  float best = 1e30f;
  int best_i = 0;
  std::string times;
  if (g.bias) cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias));
  for (int i = 0; i < found; i++) {
    auto launch = [&]() {
      return cublasLtMatmul(b.handle, p.desc, &g.alpha, g.B, p.la, g.A, p.lb, &g.beta, d, p.lc, d, p.lc, &res[i].algo,
                            workspace, kWorkspace, st);
    };
    if (launch() != CUBLAS_STATUS_SUCCESS) {
      if (trace_plans()) times += " -";
      continue;
    }
    cudaEventRecord(e0, st);
    bool ok = true;
    for (int rep = 0; rep < 3 && ok; rep++) ok = launch() == CUBLAS_STATUS_SUCCESS;
    cudaEventRecord(e1, st);
    cudaEventSynchronize(e1);
    float ms = 0;
    const bool timed = ok && cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess;
    if (trace_plans()) times += timed ? " " + std::to_string(int(ms * 1000.f / 3.f)) : std::string(" x");
    if (timed && ms < best) {
      best = ms;
      best_i = i;
    }
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamSynchronize(st);
  cudaFree(d);
  cudaGetLastError();
  if (trace_plans()) trace_plan(g, "candidates (us)" + times + "; chose " + std::to_string(best_i));
  return res[best_i].algo;
}

// Column-major view: Cᵀ[n, m] = opB'·opA' where our B plays cuBLAS's A.
Plan& plan_for(Blas& b, const Gemm& g, cudaStream_t on, void* workspace) {
  int beta_nz = g.beta != 0.f;
  PlanKey key{g.m, g.n, g.k, g.lda, g.ldb, g.ldc, g.ta, g.tb, int(g.ab), int(g.c), beta_nz, g.bias != nullptr,
              alignment_of(g.A), alignment_of(g.B), std::min(alignment_of(g.C), g.bias ? alignment_of(g.bias) : 256)};
  auto it = b.plans.find(key);
  if (it != b.plans.end()) return it->second;
  Plan p;
  cublasComputeType_t ct = CUBLAS_COMPUTE_32F;  // f32: exact fp32 (no TF32); 16-bit: f32 accumulation
  LK_BLAS(cublasLtMatmulDescCreate(&p.desc, ct, CUDA_R_32F), "matmul desc");
  cublasOperation_t opa = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLAS A = our B
  cublasOperation_t opb = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLAS B = our A
  LK_BLAS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)), "transa");
  LK_BLAS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)), "transb");
  if (g.bias) {
    cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
    LK_BLAS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof(ep)), "epilogue");
    cudaDataType_t bt = cuda_type(g.c);
    LK_BLAS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)), "bias type");
  }
  cudaDataType_t tab = cuda_type(g.ab), tc = cuda_type(g.c);
  // Stored shapes in column-major terms.
  LK_BLAS(cublasLtMatrixLayoutCreate(&p.la, tab, g.tb ? g.k : g.n, g.tb ? g.n : g.k, g.ldb), "layout B");
  LK_BLAS(cublasLtMatrixLayoutCreate(&p.lb, tab, g.ta ? g.m : g.k, g.ta ? g.k : g.m, g.lda), "layout A");
  LK_BLAS(cublasLtMatrixLayoutCreate(&p.lc, tc, g.n, g.m, g.ldc), "layout C");
  cublasLtMatmulPreference_t pref;
  LK_BLAS(cublasLtMatmulPreferenceCreate(&pref), "preference");
  size_t ws = kWorkspace;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  uint32_t al[4] = {uint32_t(alignment_of(g.B)), uint32_t(alignment_of(g.A)), uint32_t(alignment_of(g.C)), uint32_t(alignment_of(g.C))};
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0], 4);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1], 4);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2], 4);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[3], 4);
  constexpr int kCandidates = 8;
  cublasLtMatmulHeuristicResult_t res[kCandidates];
  int found = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(b.handle, p.desc, p.la, p.lb, p.lc, p.lc, pref, kCandidates, res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    cublasLtMatrixLayoutDestroy(p.la);
    cublasLtMatrixLayoutDestroy(p.lb);
    cublasLtMatrixLayoutDestroy(p.lc);
    cublasLtMatmulDescDestroy(p.desc);
    throw_state("cublasLt: no algorithm for a " + std::to_string(g.m) + "x" + std::to_string(g.n) + "x" +
                std::to_string(g.k) + " " + dtype_name(g.ab) + " GEMM (status " + std::to_string(int(st)) + ")");
  }
  p.algo = res[0].algo;
  if (found > 1) p.algo = fastest(b, p, g, res, found, on, workspace);
  else if (trace_plans())
    trace_plan(g, "one candidate");
  return b.plans.emplace(key, p).first->second;
}

}  // namespace

void run(const Gemm& g) {
  if (g.m == 0 || g.n == 0) return;
  cudaStream_t st = stream();
  Blas& b = blas();
  std::lock_guard<std::mutex> lock(b.mu);
  if (!b.handle) LK_BLAS(cublasLtCreate(&b.handle), "cublasLtCreate");
  void*& workspace = b.workspaces[st];
  if (!workspace) LK_CUDA(cudaMalloc(&workspace, kWorkspace), "cublasLt workspace");
  if (g.k == 0) {  // C = beta·C (+ bias): not worth a special kernel here; cuBLASLt rejects k = 0
    throw_range("cuda gemm: empty reduction dimension");
  }
  Plan& p = plan_for(b, g, st, workspace);
  if (g.bias)
    LK_BLAS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)), "bias");
  LK_BLAS(cublasLtMatmul(b.handle, p.desc, &g.alpha, g.B, p.la, g.A, p.lb, &g.beta, g.C, p.lc, g.C, p.lc, &p.algo,
                         workspace, kWorkspace, st),
          "matmul");
}

}  // namespace lt
}  // namespace cuda
}  // namespace lorakit

/* The benchmark's reference: times OpenBLAS sgemm on the shapes lorakit's bench runs, in a separate
 * process so that OPENBLAS_CORETYPE (set by the bench for this process only) cannot affect anything
 * else. The library is opened with dlopen, so only the shared object is needed (no headers).
 * usage: openblas_ref LIB REPS M,N,K [M,N,K ...]
 * For each shape: C[M,N] = A[M,K]·B[N,K]ᵀ (the layout of a linear layer, x·Wᵀ); prints one JSON line
 * per shape with the best and median seconds and the largest relative error of 64 sampled entries of C
 * against a double-precision dot product (to catch a wrongly selected kernel). */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void (*sgemm_fn)(int order, int ta, int tb, int m, int n, int k, float alpha, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc);
typedef char* (*corename_fn)(void);
enum { RowMajor = 101, NoTrans = 111, Trans = 112 };

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: openblas_ref LIB REPS M,N,K...\n");
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
    return 3;
  }
  sgemm_fn sgemm = (sgemm_fn)dlsym(lib, "cblas_sgemm");
  corename_fn corename = (corename_fn)dlsym(lib, "openblas_get_corename");
  if (!sgemm) {
    fprintf(stderr, "no cblas_sgemm in %s\n", argv[1]);
    return 3;
  }
  int reps = atoi(argv[2]);
  if (reps < 1) reps = 1;
  printf("{\"core\":\"%s\"}\n", corename ? corename() : "?");
  unsigned seed = 12345;
  for (int s = 3; s < argc; s++) {
    int m, n, k;
    if (sscanf(argv[s], "%d,%d,%d", &m, &n, &k) != 3) return 2;
    float* a = malloc(sizeof(float) * (size_t)m * k);
    float* b = malloc(sizeof(float) * (size_t)n * k);
    float* c = malloc(sizeof(float) * (size_t)m * n);
    for (size_t i = 0; i < (size_t)m * k; i++) a[i] = (float)rand_r(&seed) / RAND_MAX - 0.5f;
    for (size_t i = 0; i < (size_t)n * k; i++) b[i] = (float)rand_r(&seed) / RAND_MAX - 0.5f;
    double* t = malloc(sizeof(double) * reps);
    sgemm(RowMajor, NoTrans, Trans, m, n, k, 1.f, a, k, b, k, 0.f, c, n); /* warm-up */
    for (int r = 0; r < reps; r++) {
      double t0 = now();
      sgemm(RowMajor, NoTrans, Trans, m, n, k, 1.f, a, k, b, k, 0.f, c, n);
      t[r] = now() - t0;
    }
    qsort(t, reps, sizeof(double), cmp);
    double worst = 0;
    for (int q = 0; q < 64; q++) {
      int i = rand_r(&seed) % m, j = rand_r(&seed) % n;
      double ref = 0, mag = 0;
      for (int p = 0; p < k; p++) {
        ref += (double)a[(size_t)i * k + p] * b[(size_t)j * k + p];
        mag += fabs((double)a[(size_t)i * k + p] * b[(size_t)j * k + p]);
      }
      double err = fabs(c[(size_t)i * n + j] - ref) / (mag > 0 ? mag : 1);
      if (err > worst) worst = err;
    }
    printf("{\"m\":%d,\"n\":%d,\"k\":%d,\"seconds\":%.9g,\"median\":%.9g,\"maxRelErr\":%.3g}\n", m, n, k, t[0],
           t[reps / 2], worst);
    fflush(stdout);
    free(a);
    free(b);
    free(c);
    free(t);
  }
  return 0;
}

// nf4 × f32 decode GEMV (n = 1) variants on one thread, for kernel iteration without Node: the
// shipped scheme of cpu/quant_gemv_avx512.cc (a widening, a shift, two vpermps per 32 weights, the
// table scaled per block) against 64-byte loads with the nibbles reached by shifts or by offset
// loads (unscaled lookups, one per-lane scale per 128 weights), with the x chunk loaded once for R
// row streams. Checks each against a float64 reference. Cycles assume the clock given (GHZ env,
// default 3.64: this machine's measured rate, bench/harness/zen_pipes.cc prints it).
// Build: g++ -O3 -std=c++17 -pthread bench/harness/nf4_gemv_variants.cc -o nf4v
// Run:   ./nf4v <rows> <iters> [threads]   (256 rows: W in L2; 32768 rows, 2 threads: beyond the LLC)
// Results: bench/results/quant-nf4-gemv-zen4-pipes-2026-12-07.txt.
#include <immintrin.h>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <vector>
#include <chrono>
#include <cmath>
#include <thread>
static const float code[16] = {-1.0f,-0.6961928009986877f,-0.5250730514526367f,-0.39491748809814453f,-0.28444138169288635f,-0.18477343022823334f,-0.09105003625154495f,0.0f,0.07958029955625534f,0.16093020141124725f,0.24611230194568634f,0.33791524171829224f,0.44070982933044434f,0.5626170039176941f,0.7229568362236023f,1.0f};
#define T __attribute__((target("avx512f,avx512bw,avx512vbmi,avx512vl,fma")))
// V0: current scheme (x in Pairs32)
template<int R> T void v0(const uint8_t* data, const float* amax, const float* x, int64_t cols, int64_t j0, int64_t j1, float* y) {
  const __m512 table = _mm512_loadu_ps(code);
  int64_t S = (j1-j0)/R;
  for (int64_t i=0;i<S;i++) {
    __m512 acc[R][2]; const uint8_t* row[R]; const float* a[R];
    for(int r=0;r<R;r++){acc[r][0]=acc[r][1]=_mm512_setzero_ps(); row[r]=data+(j0+i+r*S)*cols/2; a[r]=amax+(j0+i+r*S)*cols/64;}
    __m512 t[R];
    for (int64_t g=0; g<cols/32; g++) {
      if ((g&1)==0) for(int r=0;r<R;r++) t[r]=_mm512_mul_ps(table,_mm512_set1_ps(a[r][g>>1]));
      for(int r=0;r<R;r++){ const uint8_t*p=row[r]+g*16; if((g&3)==0)_mm_prefetch((const char*)p+2048,_MM_HINT_T0);
        __m512i v=_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
        acc[r][0]=_mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v,4),t[r]),_mm512_loadu_ps(x+g*32),acc[r][0]);
        acc[r][1]=_mm512_fmadd_ps(_mm512_permutexvar_ps(v,t[r]),_mm512_loadu_ps(x+g*32+16),acc[r][1]);}
    }
    for(int r=0;r<R;r++) y[j0+i+r*S]=_mm512_reduce_add_ps(_mm512_add_ps(acc[r][0],acc[r][1]));
  }
}
// V1: offset loads; x in Nibbles(16) order; unscaled lookups, per-chunk scale [aA x8, aB x8]
template<int R, bool LOADS> T void v1(const uint8_t* data, const float* amax, const float* x, int64_t cols, int64_t j0, int64_t j1, float* y) {
  const __m512 table = _mm512_loadu_ps(code);
  int64_t S = (j1-j0)/R;
  const __m512i lo8 = _mm512_setr_epi32(0,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1);
  for (int64_t i=0;i<S;i++) {
    __m512 acc[R][2]; const uint8_t* row[R]; const float* a[R];
    for(int r=0;r<R;r++){acc[r][0]=acc[r][1]=_mm512_setzero_ps(); row[r]=data+(j0+i+r*S)*cols/2; a[r]=amax+(j0+i+r*S)*cols/64;}
    for (int64_t c=0; c<cols/128; c++) {
      const float* xc = x + c*128;
      for(int r=0;r<R;r++){ const uint8_t*p=row[r]+c*64; _mm_prefetch((const char*)p+2048,_MM_HINT_T0);
        __m512i v0=_mm512_loadu_si512(p), v1,v2,v3;
        if (LOADS) { v1=_mm512_loadu_si512(p+1); v2=_mm512_loadu_si512(p+2); v3=_mm512_loadu_si512(p+3);} 
        else { v1=_mm512_srli_epi32(v0,8); v2=_mm512_srli_epi32(v0,16); v3=_mm512_srli_epi32(v0,24);} 
        __m512 e=_mm512_mul_ps(_mm512_permutexvar_ps(v0,table),_mm512_loadu_ps(xc));
        __m512 o=_mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v0,4),table),_mm512_loadu_ps(xc+16));
        e=_mm512_fmadd_ps(_mm512_permutexvar_ps(v1,table),_mm512_loadu_ps(xc+32),e);
        o=_mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v1,4),table),_mm512_loadu_ps(xc+48),o);
        e=_mm512_fmadd_ps(_mm512_permutexvar_ps(v2,table),_mm512_loadu_ps(xc+64),e);
        o=_mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v2,4),table),_mm512_loadu_ps(xc+80),o);
        e=_mm512_fmadd_ps(_mm512_permutexvar_ps(v3,table),_mm512_loadu_ps(xc+96),e);
        o=_mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v3,4),table),_mm512_loadu_ps(xc+112),o);
        // scale lanes 0-7 by block 2c, 8-15 by 2c+1
        const __m512 sc=_mm512_permutexvar_ps(lo8,_mm512_castpd_ps(_mm512_set1_pd(*(const double*)(a[r]+2*c))));
        acc[r][0]=_mm512_fmadd_ps(e,sc,acc[r][0]); acc[r][1]=_mm512_fmadd_ps(o,sc,acc[r][1]);
      }
    }
    for(int r=0;r<R;r++) y[j0+i+r*S]=_mm512_reduce_add_ps(_mm512_add_ps(acc[r][0],acc[r][1]));
  }
}

// V2: like v1S but the chunk's 8 x vectors loaded once for the R rows, lookups shared
template<int R> T void v2(const uint8_t* data, const float* amax, const float* x, int64_t cols, int64_t j0, int64_t j1, float* y) {
  const __m512 table = _mm512_loadu_ps(code);
  int64_t S = (j1-j0)/R;
  const __m512i lo8 = _mm512_setr_epi32(0,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1);
  for (int64_t i=0;i<S;i++) {
    __m512 acc[R][2]; const uint8_t* row[R]; const float* a[R];
    for(int r=0;r<R;r++){acc[r][0]=acc[r][1]=_mm512_setzero_ps(); row[r]=data+(j0+i+r*S)*cols/2; a[r]=amax+(j0+i+r*S)*cols/64;}
    for (int64_t c=0; c<cols/128; c++) {
      const float* xc = x + c*128;
      __m512 xv[8]; for(int s=0;s<8;s++) xv[s]=_mm512_loadu_ps(xc+16*s);
      for(int r=0;r<R;r++){ const uint8_t*p=row[r]+c*64; _mm_prefetch((const char*)p+2048,_MM_HINT_T0);
        __m512i v0=_mm512_loadu_si512(p);
        __m512 e=_mm512_mul_ps(_mm512_permutexvar_ps(v0,table),xv[0]);
        __m512 o=_mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v0,4),table),xv[1]);
        for(int s=2;s<8;s+=2){
          e=_mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v0,4*s),table),xv[s],e);
          o=_mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v0,4*s+4),table),xv[s+1],o);}
        const __m512 sc=_mm512_permutexvar_ps(lo8,_mm512_castpd_ps(_mm512_set1_pd(*(const double*)(a[r]+2*c))));
        acc[r][0]=_mm512_fmadd_ps(e,sc,acc[r][0]); acc[r][1]=_mm512_fmadd_ps(o,sc,acc[r][1]);
      }
    }
    for(int r=0;r<R;r++) y[j0+i+r*S]=_mm512_reduce_add_ps(_mm512_add_ps(acc[r][0],acc[r][1]));
  }
}
int main(int argc,char**argv){
  const double ghz=getenv("GHZ")?atof(getenv("GHZ")):3.64;
  int64_t cols=4096, rows=atoi(argv[1]); int iters=atoi(argv[2]); int threads=argc>3?atoi(argv[3]):1;
  std::vector<uint8_t> data(rows*cols/2+64); for(auto&b:data) b=rand();
  std::vector<float> amax(rows*cols/64); for(auto&a:amax) a=0.5f+rand()/(float)RAND_MAX;
  std::vector<float> x(cols), xp(cols), xn(cols), y0(rows), y1(rows), ref(rows);
  for(auto&v:x) v=rand()/(float)RAND_MAX-0.5f;
  for(int64_t k=0;k<cols;k++){ xp[(k&~31)+(k&1)*16+((k&31)>>1)]=x[k]; int64_t in=k%128; xn[k-in+((in&7)^1)*16+in/8]=x[k]; }
  for(int64_t j=0;j<rows;j++){ double s=0; for(int64_t k=0;k<cols;k++){ uint8_t b=data[(j*cols+k)/2]; int q=(k&1)?(b&15):(b>>4); s+=(double)x[k]*(float)(code[q]*amax[(j*cols+k)/64]); } ref[j]=s; }
  auto bench=[&](const char* name, auto fn, const float* xx){
    for(int it=0;it<2;it++){ 
    auto t0=std::chrono::steady_clock::now();
    for(int it=0;it<iters;it++){ std::vector<std::thread> th; for(int t=1;t<threads;t++) th.emplace_back([&,t]{fn(data.data(),amax.data(),xx,cols,rows*t/threads,rows*(t+1)/threads,y1.data());}); fn(data.data(),amax.data(),xx,cols,0,rows/threads,y1.data()); for(auto&t:th)t.join(); }
    double s=std::chrono::duration<double>(std::chrono::steady_clock::now()-t0).count()/iters;
    double err=0,nr=0; for(int64_t j=0;j<rows;j++){err+=(y1[j]-ref[j])*(y1[j]-ref[j]); nr+=ref[j]*ref[j];}
    if(it) printf("%-12s %.3f ms  %.1f GB/s  %.2f cyc/64 per thread  relerr %.2e\n",name,s*1e3,rows*cols*0.5625/s/1e9, s*ghz*1e9*threads/(rows*cols/64.0), sqrt(err/nr));}
  };
  bench("v0 R4", v0<4>, xp.data());
  bench("v2 R4", v2<4>, xn.data());
  bench("v2 R2", v2<2>, xn.data());
  bench("v2 R1", v2<1>, xn.data());
  bench("v0 R1", v0<1>, xp.data());
  bench("v1L R4", v1<4,true>, xn.data());
  bench("v1L R1", v1<1,true>, xn.data());
  bench("v1S R4", v1<4,false>, xn.data());
  bench("v1S R1", v1<1,false>, xn.data());
}

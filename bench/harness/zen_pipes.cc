// Which vector pipes the nf4 decode GEMV's instructions share on this CPU: independent chains of
// 512-bit vpermps, vfmadd231ps, vpsrld, vpaddps and vpandd, alone and in pairs, in cycles per loop
// iteration (8 of each). Where a pair takes longer than its slower member alone, the two compete
// for the same pipes. The clock comes from a dependent integer-add loop (1 add per cycle).
// Build: g++ -O2 -std=c++17 -mavx512f -mavx512bw bench/harness/zen_pipes.cc -o zen_pipes
// Results: bench/results/quant-nf4-gemv-zen4-pipes-2026-12-07.txt.
#include <chrono>
#include <immintrin.h>
#include <cstdio>
#include <chrono>
#define N 50000000L
static double ghz = 3.0;
int main(){
  using clk=std::chrono::steady_clock;
  {  // the clock: 4 dependent adds per iteration, one per cycle
    const long n = 500000000L;
    long v = 0;
    auto t0 = clk::now();
    for (long i = 0; i < n; i++) asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(v));
    ghz = 4.0 * n / std::chrono::duration<double>(clk::now() - t0).count() / 1e9;
    printf("clock %.2f GHz (dependent adds)\n", ghz);
  }
  auto run=[&](const char* name, auto body, int ops){
    auto t0=clk::now(); body(); double s=std::chrono::duration<double>(clk::now()-t0).count();
    printf("%-34s %.2f cycles/iter (%d instr)\n", name, s*ghz*1e9/N, ops);
  };
  __m512i a0=_mm512_set1_epi32(1),a1=a0,a2=a0,a3=a0,a4=a0,a5=a0,a6=a0,a7=a0;
  __m512 f0=_mm512_set1_ps(1),f1=f0,f2=f0,f3=f0,f4=f0,f5=f0,f6=f0,f7=f0, g0=f0,g1=f0,g2=f0,g3=f0,g4=f0,g5=f0,g6=f0,g7=f0, m=_mm512_set1_ps(1.0f);
  __m512i idx=_mm512_set1_epi32(3);
#define REP8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define SH(i) asm volatile("vpsrld $1, %0, %0":"+v"(a##i));
#define PERM(i) asm volatile("vpermps %0, %1, %0":"+v"(g##i):"v"(idx));
#define FMA(i) asm volatile("vfmadd231ps %1, %1, %0":"+v"(f##i):"v"(m));
#define ADD(i) asm volatile("vaddps %1, %0, %0":"+v"(f##i):"v"(m));
#define AND(i) asm volatile("vpandd %1, %0, %0":"+v"(a##i):"v"(idx));
  run("perm8", [&]{for(long n=0;n<N;n++){REP8(PERM)}}, 8);
  run("fma8", [&]{for(long n=0;n<N;n++){REP8(FMA)}}, 8);
  run("shift8", [&]{for(long n=0;n<N;n++){REP8(SH)}}, 8);
  run("perm8 fma8", [&]{for(long n=0;n<N;n++){REP8(PERM) REP8(FMA)}}, 16);
  run("perm8 shift8", [&]{for(long n=0;n<N;n++){REP8(PERM) REP8(SH)}}, 16);
  run("fma8 shift8", [&]{for(long n=0;n<N;n++){REP8(FMA) REP8(SH)}}, 16);
  run("perm8 fma8 shift8", [&]{for(long n=0;n<N;n++){REP8(PERM) REP8(FMA) REP8(SH)}}, 24);
  run("perm8 fma8 shift4", [&]{for(long n=0;n<N;n++){REP8(PERM) REP8(FMA) SH(0) SH(1) SH(2) SH(3)}}, 20);
  run("perm8 add8", [&]{for(long n=0;n<N;n++){REP8(PERM) REP8(ADD)}}, 16);
  run("perm8 and8", [&]{for(long n=0;n<N;n++){REP8(PERM) REP8(AND)}}, 16);
  run("fma8 and8", [&]{for(long n=0;n<N;n++){REP8(FMA) REP8(AND)}}, 16);
  __m512 s=_mm512_add_ps(_mm512_add_ps(f0,f1),_mm512_add_ps(f2,f3)); s=_mm512_add_ps(s,_mm512_add_ps(_mm512_add_ps(f4,f5),_mm512_add_ps(f6,f7)));
  s=_mm512_add_ps(s,_mm512_add_ps(_mm512_add_ps(g0,g1),_mm512_add_ps(g2,g3))); s=_mm512_add_ps(s,_mm512_add_ps(_mm512_add_ps(g4,g5),_mm512_add_ps(g6,g7)));
  __m512i t=_mm512_add_epi32(_mm512_add_epi32(a0,a1),_mm512_add_epi32(a2,a3)); t=_mm512_add_epi32(t,_mm512_add_epi32(_mm512_add_epi32(a4,a5),_mm512_add_epi32(a6,a7)));
  printf("%f %d\n", _mm512_reduce_add_ps(s), _mm512_reduce_add_epi32(t));
}

// The vector form of the exact-merge segment codec (exact_codec_avx512.cc): byte for byte the
// stream of core/exact_format.h's encode_segment_masked, read back like decode_segment (which it
// checks the same way); entries of c outside the flagged elements are 0 after a decode (raw's are
// left alone). out needs room for core/exact_format.h's kMaxSegmentBytes plus kEncodeSlack.
#pragma once
#include <cstdint>
#include "../core/dtype.h"

namespace lorakit {

constexpr int kEncodeSlack = 64;

bool exact_codec_vbmi2_supported();
int exact_encode_vbmi2(const int8_t* c, const void* orig, int len, DType t, const uint64_t (&nz)[4], uint8_t* out);
bool exact_decode_vbmi2(const uint8_t* s, int bytes, int len, DType t, int8_t* c, void* raw, uint64_t (&nz)[4]);

}  // namespace lorakit

// exact_merge.test.js's cases again with unmerges on the unstaged kernel (native/cuda/exact_chain.cuh;
// LORAKIT_EXACT_STAGE=0, kept for A/B runs), so both kernels stay tested. The flag is read at this
// process's first exact call, and node --test runs each file in a process of its own.
'use strict';
process.env.LORAKIT_EXACT_STAGE = '0';
require('./exact_merge.test.js');

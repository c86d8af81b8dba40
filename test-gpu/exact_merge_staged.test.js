// exact_merge.test.js's cases again with unmerges on the staged kernel (native/cuda/exact_chain.cuh,
// LORAKIT_EXACT_STAGE=1, opt-in until measured). The flag is read at this process's first exact call,
// and node --test runs each file in a process of its own.
'use strict';
process.env.LORAKIT_EXACT_STAGE = '1';
require('./exact_merge.test.js');

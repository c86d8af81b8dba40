#!/usr/bin/env python3
"""Checks an adapter saved by lorakit (scripts/peft-check/make_adapter.js) with the real peft.

usage: python3 check.py <opt_tiny dir> <adapter dir> <merged.safetensors>

1. PeftModel.from_pretrained loads our adapter (no unknown-key or missing-key warnings), and the
   LoRA tensors it holds equal ours exactly (get_peft_model_state_dict vs our file).
2. peft's logits with the adapter match the logits of the base model loaded with our merged weights.
3. peft's own merge_and_unload weights match our merged weights tensor by tensor.
Tolerance: relative error ||a - b|| / ||b|| <= 1e-5 in float32. Prints PASS/FAIL lines; exit 1 on failure.
"""
import os
import sys
import warnings

import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

TOL = 1e-5
failures = []


def report(ok, what, detail=""):
    print(f"{'PASS' if ok else 'FAIL'} {what}{(': ' + detail) if detail else ''}")
    if not ok:
        failures.append(what)


def rel_err(a, b):
    a = a.detach().double()
    b = b.detach().double()
    den = b.norm()
    return float((a - b).norm() / den) if den > 0 else float((a - b).norm())


def load_model(tiny_dir, weights_file):
    config = AutoConfig.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_config(config).to(torch.float32)
    state = load_file(weights_file)
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    tied_ok = all(k == "model.decoder.embed_tokens.weight" for k in missing)
    report(tied_ok and not unexpected, f"load {os.path.basename(weights_file)}", f"missing={missing} unexpected={unexpected}")
    return model.eval()


def main(tiny_dir, adapter_dir, merged_file):
    torch.manual_seed(0)
    base_file = os.path.join(tiny_dir, "base_model.safetensors")
    expected = load_file(os.path.join(tiny_dir, "expected.safetensors"))
    input_ids = expected["input_ids"]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(load_model(tiny_dir, base_file), adapter_dir).eval()
    noisy = [str(w.message) for w in caught if "key" in str(w.message).lower()]
    report(not noisy, "PeftModel.from_pretrained without key warnings", "; ".join(noisy))

    ours = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    theirs = get_peft_model_state_dict(peft_model)
    report(set(ours) == set(theirs), "same LoRA tensor names", f"only ours: {sorted(set(ours) - set(theirs))[:3]}, only peft: {sorted(set(theirs) - set(ours))[:3]}")
    exact = [k for k in ours if k in theirs and torch.equal(ours[k], theirs[k].cpu())]
    report(len(exact) == len(ours), "LoRA tensors loaded by peft equal ours exactly", f"{len(exact)}/{len(ours)}")

    with torch.no_grad():
        logits_peft = peft_model(input_ids).logits[0]
        merged_model = load_model(tiny_dir, merged_file)
        logits_merged = merged_model(input_ids).logits[0]
        base_logits = load_model(tiny_dir, base_file)(input_ids).logits[0]
    e = rel_err(logits_merged, logits_peft)
    report(e <= TOL, "peft logits with our adapter == logits with our merged weights", f"rel err {e:.3e}")
    d = rel_err(base_logits, logits_peft)
    report(d > 1e-3, "the adapter changes the logits (non-trivial check)", f"rel diff vs base {d:.3e}")

    merged_peft = peft_model.merge_and_unload().state_dict()
    ours_merged = load_file(merged_file)
    worst = ("", 0.0)
    missing = [k for k in ours_merged if k not in merged_peft]
    for k, v in ours_merged.items():
        if k in merged_peft:
            err = rel_err(v, merged_peft[k])
            if err > worst[1]:
                worst = (k, err)
    report(not missing and worst[1] <= TOL, "peft merge_and_unload weights == our mergeAndUnload", f"max rel err {worst[1]:.3e} ({worst[0] or '-'}), missing {missing[:3]}")

    print("PASS" if not failures else f"FAIL ({len(failures)} checks failed)")
    return 0 if not failures else 1


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:4]))

#!/usr/bin/env python3
"""Times peft 0.21 LoRA Linear and bare PyTorch (cuBLAS) on the shapes of bench/gpu.js, with CUDA
events, 4 rotating weight sets (so W does not sit in L2), median of repeats. Prints one JSON
object on stdout; bench/gpu.js runs it and prints the ratios."""
import json
import sys

import torch
import peft
from peft import LoraConfig, inject_adapter_in_model

torch.backends.cuda.matmul.allow_tf32 = False
DEV = "cuda"
DT = torch.bfloat16
SETS = 4


def lora_linear(base, r, use_dora=False):
    """peft's LoRA Linear around `base` (through the public injection API), bf16 adapters."""
    holder = torch.nn.Module()
    holder.lin = base
    cfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["lin"], use_dora=use_dora)
    holder = inject_adapter_in_model(cfg, holder)
    layer = holder.lin
    torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.02)
    layer.to(DT)
    return layer


def lora_linear_multi(base, r, names):
    """peft's LoRA Linear with several adapters (a second injection adds to the same layer)."""
    holder = torch.nn.Module()
    holder.lin = base
    for name in names:
        cfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["lin"])
        holder = inject_adapter_in_model(cfg, holder, adapter_name=name)
    layer = holder.lin
    for name in names:
        torch.nn.init.normal_(layer.lora_B[name].weight, std=0.02)
    layer.to(DT)
    layer.eval()
    return layer


def timed(fn, sets, reps=5, target_ms=25.0):
    for s in sets[:2]:
        fn(s)
    torch.cuda.synchronize()
    st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    st.record()
    for s in sets:
        fn(s)
    en.record()
    torch.cuda.synchronize()
    per = st.elapsed_time(en) / len(sets)
    iters = max(len(sets), min(400, int(target_ms / max(per, 1e-3))))
    out = []
    for _ in range(reps):
        st.record()
        for i in range(iters):
            fn(sets[i % len(sets)])
        en.record()
        torch.cuda.synchronize()
        out.append(st.elapsed_time(en) * 1000.0 / iters)
    out.sort()
    return out[len(out) // 2]


def dora_rows(cfg, gen):
    """DoRA against plain LoRA (bench/gpu_dora.js): forward in eval (no_grad) and in training mode
    (autograd on, forward only); peft recomputes the weight norm on every forward."""
    d_in, r, rows = cfg["d_in"], cfg["dora_r"], []
    for d_out in cfg["d_out"]:
        for n in cfg["dora_n"]:
            try:
                x = torch.randn(n, d_in, device=DEV, dtype=DT, generator=gen)
                row = {"op": "dora", "d_out": d_out, "n": n, "r": r}
                for name, use_dora in (("lora", False), ("dora", True)):
                    bases = [torch.nn.Linear(d_in, d_out, bias=False, device=DEV, dtype=DT) for _ in range(SETS)]
                    for b in bases:
                        b.weight.requires_grad_(False)
                    layers = [lora_linear(b, r, use_dora) for b in bases]
                    for l in layers:
                        l.eval()
                    with torch.no_grad():
                        row[f"peft_{name}_eval_us"] = timed(lambda l: l(x), layers)
                    for l in layers:
                        l.train()
                    row[f"peft_{name}_train_us"] = timed(lambda l: l(x), layers)
                    del layers, bases
                    torch.cuda.empty_cache()
                rows.append(row)
                del x
            except Exception as e:  # keep the other rows if this peft API differs
                rows.append({"op": "dora", "d_out": d_out, "n": n, "r": r, "error": repr(e)})
    return rows


def main():
    cfg = json.loads(sys.argv[1])
    d_in = cfg["d_in"]
    res = {"torch": torch.__version__, "peft": peft.__version__, "gpu": torch.cuda.get_device_name(0), "rows": []}
    gen = torch.Generator(device=DEV).manual_seed(0)
    if cfg.get("dora_only"):
        res["rows"] = dora_rows(cfg, gen)
        print(json.dumps(res))
        return
    for d_out in cfg["d_out"]:
        bases = [torch.nn.Linear(d_in, d_out, bias=False, device=DEV, dtype=DT) for _ in range(SETS)]
        for b in bases:
            b.weight.requires_grad_(False)
        for n in cfg["n"]:
            x = torch.randn(n, d_in, device=DEV, dtype=DT, generator=gen)
            xg = x.clone().requires_grad_(True)
            dy = torch.randn(n, d_out, device=DEV, dtype=DT, generator=gen)
            base_fwd = timed(lambda b: torch.nn.functional.linear(x, b.weight), bases)
            # base forward + dx (W frozen): the reference of the fwd+bwd target
            def base_fb(b):
                y = torch.nn.functional.linear(xg, b.weight)
                y.backward(dy)
            base_fb_us = timed(base_fb, bases)
            for r in cfg["r"]:
                layers = [lora_linear(b, r) for b in bases]
                with torch.no_grad():
                    fwd = timed(lambda l: l(x), layers)
                def fb(l):
                    y = l(xg)
                    y.backward(dy)
                fwdbwd = timed(fb, layers)
                for l in layers:
                    l.zero_grad(set_to_none=True)
                res["rows"].append({"d_out": d_out, "n": n, "r": r, "torch_base_fwd_us": base_fwd,
                                    "torch_base_fwd_dx_us": base_fb_us, "peft_fwd_us": fwd, "peft_fwdbwd_us": fwdbwd})
                # unwrap so the base layers can be wrapped again
                for l, b in zip(layers, bases):
                    del l
                torch.cuda.empty_cache()
            del x, xg, dy
        # Mixed batches: 4 adapters, rows assigned round-robin (peft's adapter_names forward).
        for n in cfg.get("mixed_n", []):
            r = cfg["mixed_r"]
            names = ["a0", "a1", "a2", "a3"]
            try:
                fresh = [torch.nn.Linear(d_in, d_out, bias=False, device=DEV, dtype=DT) for _ in range(SETS)]
                for b in fresh:
                    b.weight.requires_grad_(False)
                layers = [lora_linear_multi(b, r, names) for b in fresh]
                x = torch.randn(n, d_in, device=DEV, dtype=DT, generator=gen)
                row_names = [names[i % 4] for i in range(n)]
                with torch.no_grad():
                    base_fwd = timed(lambda l: torch.nn.functional.linear(x, l.base_layer.weight), layers)
                    fwd = timed(lambda l: l(x, adapter_names=row_names), layers)
                res["rows"].append({"d_out": d_out, "n": n, "r": r, "op": "mixed", "torch_base_fwd_us": base_fwd, "peft_mixed_us": fwd})
                del layers, fresh, x
            except Exception as e:  # keep the other rows if this peft API differs
                res["rows"].append({"d_out": d_out, "n": n, "r": r, "op": "mixed", "error": repr(e)})
            torch.cuda.empty_cache()
        for r in cfg["r"]:
            layers = [lora_linear(b, r) for b in bases]
            def mu(l):
                l.merge()
                l.unmerge()
            with torch.no_grad():
                pair = timed(mu, layers)
            res["rows"].append({"d_out": d_out, "r": r, "op": "merge", "peft_merge_us": pair / 2})
            # hot-swap as peft does it: unmerge the merged adapter, merge the other (two passes)
            swaps = [lora_linear_multi(b, r, ["a", "b"]) for b in bases]
            state = {}
            def swap(l):
                cur = state.get(id(l))
                if cur is not None:
                    l.unmerge()
                nxt = "b" if cur == "a" else "a"
                l.merge(adapter_names=[nxt])
                state[id(l)] = nxt
            with torch.no_grad():
                sw = timed(swap, swaps)
            res["rows"].append({"d_out": d_out, "r": r, "op": "swap", "peft_swap_us": sw})
            for l in swaps:
                if l.merged:
                    l.unmerge()
            del swaps
        del bases
        torch.cuda.empty_cache()
    # copy bandwidth (read + write) on a 1 GiB buffer
    a = torch.empty(1 << 29, device=DEV, dtype=DT)
    a.normal_()
    b = torch.empty_like(a)
    t = timed(lambda _: b.copy_(a), [0], reps=5, target_ms=50)
    res["copy_tbps"] = 2 * a.numel() * 2 / (t * 1e-6) / 1e12
    del a, b
    torch.cuda.empty_cache()
    if "dora_n" in cfg:
        res["rows"] += dora_rows(cfg, gen)
    print(json.dumps(res))


if __name__ == "__main__":
    main()

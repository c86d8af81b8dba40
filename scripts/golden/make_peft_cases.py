#!/usr/bin/env python3
"""Makes lorakit's peft golden cases for the features beyond plain LoRA, with the real peft.

usage: python3 make_peft_cases.py <output dir>   (the repo keeps its output in test/fixtures/peft_cases)

Needs torch, peft (0.21) and safetensors; no network: every model is built here with fixed seeds.
Values are drawn as float32 numbers, the computations run in float64, the files hold float32 (I64
for class indices), in the format of shared/golden (README there). Output:

  <case>/base_model.safetensors    the tiny model's state dict before peft touches it
  <case>/adapter/                  peft's own save_pretrained directory
  <case>/merged_model.safetensors  merge_and_unload()'s state dict
  <case>/expected.safetensors      x, dy, y (training mode, dropout 0), y_merged, y_base, and for each
                                   parameter with requires_grad (peft's name N): value.N and grad.N,
                                   the gradient of sum(y * dy); metadata "case" holds the settings
  pissa.safetensors, olora.safetensors   W, peft's A and B, and W_residual (the rewritten base)
  label_smoothing.safetensors      logits, targets (I64), torch's cross_entropy values and gradient

Cases: bias_all (bias="all"), bias_lora_only (bias="lora_only"), lora_bias (lora_bias=True),
modules_to_save (a classifier head and a LayerNorm). The tiny model is
  y = classifier(norm(fc2(fc1(x))))   fc1: 12->16, fc2: 16->16, norm: LayerNorm(16), classifier: 16->5
with LoRA (r=4, alpha=8) on fc1 and fc2. Every bias, lora_B and saved module is moved away from its
initial value before y is computed and the adapter saved, so each one changes the results.
"""
import copy
import json
import os
import sys

import torch
import peft
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

DIN, HIDDEN, CLASSES, N = 12, 16, 5, 6
R, ALPHA = 4, 8


def f32_exact(t):
    """The float64 tensor of t's float32 rounding: what the files store is exactly what was used."""
    return t.float().double()


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(DIN, HIDDEN)
        self.fc2 = torch.nn.Linear(HIDDEN, HIDDEN)
        self.norm = torch.nn.LayerNorm(HIDDEN)
        self.classifier = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, x):
        return self.classifier(self.norm(self.fc2(self.fc1(x))))


def base_model(seed):
    torch.manual_seed(seed)
    m = TinyNet().double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(f32_exact(torch.randn(p.shape, dtype=torch.float64) * 0.3))
        m.norm.weight.add_(1.0)  # away from 0 and 1, so a wrong norm weight shows
    return m


def round_params(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(f32_exact(p))


def f32_state(sd):
    return {k: v.detach().float().contiguous() for k, v in sd.items()}


def model_case(out_dir, name, config_kwargs, seed, perturb):
    os.makedirs(os.path.join(out_dir, name), exist_ok=True)
    d = os.path.join(out_dir, name)
    base = base_model(seed)
    save_file(f32_state(base.state_dict()), os.path.join(d, "base_model.safetensors"))

    g = torch.Generator().manual_seed(seed + 1)
    x = f32_exact(torch.randn(N, DIN, generator=g, dtype=torch.float64))
    dy = f32_exact(torch.randn(N, CLASSES, generator=g, dtype=torch.float64))
    with torch.no_grad():
        y_base = base(x)

    cfg = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["fc1", "fc2"], init_lora_weights=False, **config_kwargs)
    model = get_peft_model(copy.deepcopy(base), cfg)
    model = model.double()
    with torch.no_grad():
        perturb(model, g)
    round_params(model)
    model.train()

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    y = model(x)
    (y * dy).sum().backward()
    tensors = {"x": x, "dy": dy, "y": y.detach(), "y_base": y_base}
    for n, p in trainable:
        tensors[f"value.{n}"] = p.detach()
        tensors[f"grad.{n}"] = p.grad.detach()

    model.float()  # peft saves the parameters' dtype; the files hold float32 (values are float32-exact)
    model.save_pretrained(os.path.join(d, "adapter"))
    model.double()
    merged = model.merge_and_unload()
    with torch.no_grad():
        tensors["y_merged"] = merged(x)
    save_file(f32_state(merged.state_dict()), os.path.join(d, "merged_model.safetensors"))

    meta = {
        "kind": "tiny_net",
        "forward": "classifier(norm(fc2(fc1(x))))",
        "din": DIN, "hidden": HIDDEN, "classes": CLASSES, "n": N,
        "r": R, "lora_alpha": ALPHA, "scaling": ALPHA / R, "target_modules": ["fc1", "fc2"],
        "layer_norm_eps": base.norm.eps,
        "config": {k: (list(v) if isinstance(v, (list, set, tuple)) else v) for k, v in config_kwargs.items()},
        "trainable": [n for n, _ in trainable],
        "loss": "sum(y * dy)",
        **versions(),
    }
    save_file(f32_state(tensors), os.path.join(d, "expected.safetensors"), metadata={"case": json.dumps(meta)})
    print(f"{name}: {len(trainable)} trainable tensors, adapter keys {sorted(saved_keys(d))}")


def saved_keys(d):
    from safetensors import safe_open

    with safe_open(os.path.join(d, "adapter", "adapter_model.safetensors"), "pt") as f:
        return list(f.keys())


def nudge(p, g, scale=0.2):
    p.add_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)


def perturb_biases(model, g):
    """bias="all" / "lora_only": the trainable biases as after some training, and a non-zero lora_B."""
    for n, p in model.named_parameters():
        if "lora_B" in n or (p.requires_grad and n.endswith("bias")):
            nudge(p, g)


def perturb_lora_bias(model, g):
    for n, p in model.named_parameters():
        if "lora_B" in n:  # weight and bias
            nudge(p, g)


def perturb_saved(model, g):
    """modules_to_save: the adapter's copies of classifier and norm differ from the originals."""
    for n, p in model.named_parameters():
        if "lora_B" in n or ".modules_to_save." in n:
            nudge(p, g)


def weight_init_case(out_dir, kind, seed):
    torch.manual_seed(seed)
    holder = torch.nn.Module()
    holder.lin = torch.nn.Linear(20, 24, bias=False)
    with torch.no_grad():
        holder.lin.weight.copy_(torch.randn(24, 20))
    W = holder.lin.weight.detach().clone()
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["lin"], init_lora_weights=kind)
    model = get_peft_model(holder, cfg)
    layer = model.base_model.model.lin
    tensors = {
        "W": W,
        "A": layer.lora_A["default"].weight.detach(),
        "B": layer.lora_B["default"].weight.detach(),
        "W_residual": layer.base_layer.weight.detach(),
    }
    meta = {"kind": kind, "din": 20, "dout": 24, "r": R, "lora_alpha": ALPHA, "scaling": ALPHA / R, **versions()}
    save_file(f32_state(tensors), os.path.join(out_dir, f"{kind}.safetensors"), metadata={"case": json.dumps(meta)})
    print(f"{kind}: |W - W_residual| / |W| = {float((W - tensors['W_residual']).norm() / W.norm()):.3f}")


def label_smoothing_case(out_dir, seed):
    g = torch.Generator().manual_seed(seed)
    rows, classes, eps = 6, 7, 0.1
    logits = f32_exact(torch.randn(rows, classes, generator=g, dtype=torch.float64) * 3)
    targets = torch.tensor([3, 0, -100, 6, 2, 3], dtype=torch.int64)
    lg = logits.clone().requires_grad_(True)
    loss_mean = torch.nn.functional.cross_entropy(lg, targets, label_smoothing=eps, reduction="mean", ignore_index=-100)
    loss_mean.backward()
    loss_sum = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=eps, reduction="sum", ignore_index=-100)
    tensors = {
        "logits": logits.float(),
        "targets": targets,
        "loss_mean": loss_mean.detach().reshape(1).float(),
        "loss_sum": loss_sum.reshape(1).float(),
        "grad_mean": lg.grad.float(),
    }
    meta = {"label_smoothing": eps, "ignore_index": -100, "loss_mean": loss_mean.item(), "loss_sum": loss_sum.item(), **versions()}
    save_file(tensors, os.path.join(out_dir, "label_smoothing.safetensors"), metadata={"case": json.dumps(meta)})
    print(f"label_smoothing: mean {loss_mean.item():.17g}, sum {loss_sum.item():.17g}")


def versions():
    out = {"peft": peft.__version__, "torch": torch.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:
        pass
    return out


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    model_case(out_dir, "bias_all", {"bias": "all"}, 100, perturb_biases)
    model_case(out_dir, "bias_lora_only", {"bias": "lora_only"}, 200, perturb_biases)
    model_case(out_dir, "lora_bias", {"lora_bias": True}, 300, perturb_lora_bias)
    model_case(out_dir, "modules_to_save", {"modules_to_save": ["classifier", "norm"]}, 400, perturb_saved)
    weight_init_case(out_dir, "pissa", 500)
    weight_init_case(out_dir, "olora", 600)
    label_smoothing_case(out_dir, 700)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(__doc__.replace("usage: python3 make_peft_cases.py <output dir>   (the repo keeps its output in test/fixtures/peft_cases)", f"Made by scripts/golden/make_peft_cases.py with {versions()}."))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))

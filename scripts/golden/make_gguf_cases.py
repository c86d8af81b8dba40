#!/usr/bin/env python3
"""Golden cases like shared/golden/llama_tiny for the other architectures lorakit converts to GGUF.

usage: python3 scripts/golden/make_gguf_cases.py OUT_DIR [--archs mistral,qwen2,qwen3,gemma2,phi3] [--device cpu|cuda]

Needs transformers 5.17 and peft 0.21 (and torch); no network: each model is built from a tiny config
with random weights (seeded), nothing is downloaded. For each architecture it writes OUT_DIR/<arch>_tiny/:
  config.json, generation_config.json, model.safetensors   the base model (save_pretrained)
  adapter/                                                  a peft LoRA on every linear layer (save_pretrained)
  expected.safetensors                                      input_ids [1, 12] (I64) and transformers' float32
                                                            logits_base, logits_lora, logits_merged [12, vocab],
                                                            with the settings as JSON in metadata["case"]
  README.md                                                 what the case is
Like llama_tiny: 2 layers, hidden 64, 4 heads with 2 key/value heads (head_dim 16), vocab 256, no tokenizer,
RMSNorm weights set away from their identity value, an adapter (r=4, alpha=8, init_lora_weights=False) whose
lora_B is rescaled so it moves the logits by about 100% (relative norm).
Architecture specifics exercised: mistral (converted as llama, Q/K permuted), qwen2 (q/k/v biases, tied
embeddings: no lm_head in the GGUF and no LoRA on it), qwen3 (q_norm/k_norm), gemma2 (norms stored as
w + 1 in GGUF, logit soft-capping, query_pre_attn_scalar = head_dim as llama.cpp assumes), phi3 (fused
qkv_proj and gate_up_proj).
Copy the case directories into shared/golden/; test/gguf_golden_archs.test.ts runs every case it finds.
"""
import argparse
import json
import os
import sys

import torch
import peft
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

COMMON = dict(
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=256,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=None,
    dtype="float32",
)

ATTN_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CASES = {
    "mistral": dict(config=dict(model_type="mistral", sliding_window=None, tie_word_embeddings=False), targets=ATTN_MLP),
    "qwen2": dict(config=dict(model_type="qwen2", tie_word_embeddings=True, use_sliding_window=False), targets=ATTN_MLP),
    "qwen3": dict(config=dict(model_type="qwen3", tie_word_embeddings=False, use_sliding_window=False), targets=ATTN_MLP),
    "gemma2": dict(
        config=dict(
            model_type="gemma2",
            tie_word_embeddings=True,
            query_pre_attn_scalar=16,
            sliding_window=4096,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            hidden_activation="gelu_pytorch_tanh",
        ),
        targets=ATTN_MLP,
        # Gemma's RMSNorm computes x * (1 + w): "away from identity" means w away from 0
        norm_center=0.0,
    ),
    "phi3": dict(
        config=dict(model_type="phi3", tie_word_embeddings=False, sliding_window=None, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0),
        targets=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    ),
}


def rel(a, b):
    a = a.double()
    b = b.double()
    return float((a - b).norm() / b.norm())


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits[0].float().cpu()


def make_case(arch, spec, out_root, device):
    torch.manual_seed(1234)
    cfg_kwargs = {**COMMON, **spec["config"]}
    model_type = cfg_kwargs.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **cfg_kwargs)
    # eager attention everywhere: gemma2's soft-capping needs it, and it is the plainest reference
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager").to(device).eval()
    center = spec.get("norm_center", 1.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(center + 0.2 * torch.randn_like(p))
    case_dir = os.path.join(out_root, f"{arch}_tiny")
    os.makedirs(case_dir, exist_ok=True)
    model.save_pretrained(case_dir, safe_serialization=True)

    gen = torch.Generator().manual_seed(99)
    ids = torch.randint(3, cfg_kwargs["vocab_size"], (1, 12), generator=gen).to(device)
    logits_base = logits(model, ids)

    lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=spec["targets"], lora_dropout=0.0, init_lora_weights=False)
    pmodel = get_peft_model(model, lcfg).eval()
    # rescale lora_B so the adapter moves the logits by about 100%
    moved = 0.0
    for _ in range(4):
        moved = rel(logits(pmodel, ids), logits_base)
        if abs(moved - 1.0) < 0.1:
            break
        with torch.no_grad():
            for name, p in pmodel.named_parameters():
                if "lora_B" in name:
                    p.mul_(1.0 / max(moved, 1e-3))
    logits_lora = logits(pmodel, ids)
    moved = rel(logits_lora, logits_base)
    pmodel.save_pretrained(os.path.join(case_dir, "adapter"))
    merged = pmodel.merge_and_unload().eval()
    logits_merged = logits(merged, ids)
    case = {
        "kind": f"{arch}_tiny", "arch": arch, "lora": {"r": 4, "lora_alpha": 8}, "target_modules": spec["targets"],
        "transformers": transformers.__version__, "peft": peft.__version__, "torch": torch.__version__,
        "adapter_moves_logits": moved, "merged_vs_lora": rel(logits_merged, logits_lora),
    }
    save_file(
        {"input_ids": ids.cpu().to(torch.int64).contiguous(), "logits_base": logits_base.contiguous(),
         "logits_lora": logits_lora.contiguous(), "logits_merged": logits_merged.contiguous()},
        os.path.join(case_dir, "expected.safetensors"),
        metadata={"case": json.dumps(case)},
    )
    with open(os.path.join(case_dir, "README.md"), "w") as f:
        f.write(f"# {arch}_tiny\n\nMade by scripts/golden/make_gguf_cases.py (lorakit) with transformers {transformers.__version__}, "
                f"peft {peft.__version__}, torch {torch.__version__}.\n\n```json\n{json.dumps(case, indent=2)}\n```\n")
    print(f"{arch}_tiny: adapter moves logits {moved:.3f}, merged vs lora {case['merged_vs_lora']:.2e} -> {case_dir}")
    if case["merged_vs_lora"] > 1e-4:
        print(f"  warning: merge_and_unload differs from the adapter's forward by {case['merged_vs_lora']:.2e}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--archs", default=",".join(CASES))
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    for arch in a.archs.split(","):
        if arch not in CASES:
            sys.exit(f"unknown arch {arch} (known: {', '.join(CASES)})")
        make_case(arch, CASES[arch], a.out_dir, a.device)


if __name__ == "__main__":
    main()

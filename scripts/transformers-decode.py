#!/usr/bin/env python3
"""Hugging Face transformers' greedy decode speed on one device: the peer figure `bench gpu` is compared with.

Prints one JSON line per batch size: decode tokens/s over `--tokens` new tokens per sequence (end of
sequence ignored, so every run generates the same count), after one warm-up run, eager attention as in
PLATFORM.md's H100 figures. Runs where torch and transformers are installed (the GPU machine has both):

  python3 scripts/transformers-decode.py --model models/tiny-moe --batch 1,16 --tokens 128
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The Python interpreter",
    "A list comprehension",
    "Q: What is a generator?\nA:",
    "import os\n",
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--batch", default="1,16", help="comma-separated batch sizes")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--runs", type=int, default=2, help="measured runs per batch size (after one warm-up)")
    a = p.parse_args()

    tok = AutoTokenizer.from_pretrained(a.model)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype), attn_implementation="eager").to(a.device)
    model.eval()
    device_name = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else a.device

    for batch in [int(b) for b in a.batch.split(",")]:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        enc = tok(prompts, return_tensors="pt", padding=True).to(a.device)
        kwargs = dict(max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        times = []
        with torch.inference_mode():
            for run in range(a.runs + 1):
                if a.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = model.generate(**enc, **kwargs)
                if a.device.startswith("cuda"):
                    torch.cuda.synchronize()
                if run > 0:
                    times.append(time.perf_counter() - t0)
        generated = (out.shape[1] - enc["input_ids"].shape[1]) * batch
        best = min(times)
        print(json.dumps({
            "bench": "transformers-decode",
            "device": device_name,
            "dtype": a.dtype,
            "batch": batch,
            "new_tokens_per_sequence": a.tokens,
            "tokens_per_s_best": round(generated / best, 1),
            "tokens_per_s_median": round(generated / sorted(times)[len(times) // 2], 1),
            "transformers": __import__("transformers").__version__,
            "torch": torch.__version__,
        }), flush=True)


if __name__ == "__main__":
    main()

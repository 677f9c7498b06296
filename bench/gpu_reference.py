#!/usr/bin/env python3
"""Independent reference for `bench/gpu.sh`: makes a random LLaMA checkpoint (safetensors, Hugging Face layout) and a
token file, and scores the tokens with transformers in fp32 and bf16 over the same strided windows SuperQuant uses
(context C, stride S: the first window scores all its positions, later ones only the S new tokens; every target is
scored once). Prints one JSON line per run: {"engine": "transformers", "dtype", "seconds", "tokens_per_s", "perplexity"}.
Needs torch + transformers (the lent GPU machine has both); nothing is downloaded."""
import argparse, json, math, os, time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def windows(n, context, stride):
    done, first = 0, True
    while done < n - 1:
        end = min(context, n) if first else min(done + 1 + stride, n)
        start = max(0, end - context)
        yield start, end, done - start
        done, first = end - 1, False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=22)
    p.add_argument("--ffn", type=int, default=5632)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--device", default="cuda")
    a = p.parse_args()
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers, num_attention_heads=a.heads,
                      num_key_value_heads=a.kv_heads, vocab_size=a.vocab, max_position_embeddings=4096, tie_word_embeddings=False)
    ckpt = os.path.join(a.out, "model")
    if not os.path.exists(os.path.join(ckpt, "config.json")):
        model = LlamaForCausalLM(cfg)
        with torch.no_grad():
            for t in model.parameters():
                if t.dim() == 2:
                    t.normal_(0, 0.02)
        model.save_pretrained(ckpt, safe_serialization=True)
        del model
    ids = torch.randint(0, a.vocab, (a.tokens,), generator=torch.Generator().manual_seed(1)).tolist()
    with open(os.path.join(a.out, "tokens.txt"), "w") as f:
        f.write(" ".join(map(str, ids)))
    stride = a.context // 2
    for dtype in (torch.float32, torch.bfloat16):
        model = LlamaForCausalLM.from_pretrained(ckpt, torch_dtype=dtype).to(a.device).eval()
        t = torch.tensor(ids, device=a.device)
        for warm in (True, False):
            if a.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            nll, n = 0.0, 0
            with torch.inference_mode():
                for start, end, first in windows(len(ids), a.context, stride):
                    logits = model(t[start:end].unsqueeze(0)).logits[0].float()
                    lp = torch.log_softmax(logits[first:end - start - 1], -1)
                    target = t[start + first + 1:end]
                    nll -= lp.gather(1, target.unsqueeze(1)).sum().item()
                    n += target.numel()
            if a.device == "cuda":
                torch.cuda.synchronize()
            s = time.perf_counter() - t0
        print(json.dumps({"engine": "transformers", "dtype": str(dtype).replace("torch.", ""), "seconds": s, "tokens_per_s": n / s,
                          "perplexity": math.exp(nll / n), "tokens_scored": n}), flush=True)
        del model


if __name__ == "__main__":
    main()

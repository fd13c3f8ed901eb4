#!/usr/bin/env python3
"""The single-GPU MoE layer forward of moex_bench_gpu beside a straightforward
PyTorch implementation of the same layer, timed on the same GPU.

The PyTorch layer is what a model file typically writes (Hugging Face's
Mixtral/DeepSeek blocks): router GEMM, softmax, top-k, renormalise, then a
Python loop over the experts that gathers each expert's tokens, runs
gate/up, SwiGLU and down in bf16, and index_adds the weighted result.
Shapes come from moex_bench_gpu's JSON, so both sides run the same layer.

  python3 bench/gpu_layer_torch.py --moex-json gpu-bench.json [--out FILE] [--reps 20]

Prints the two times and the speed-up (PyTorch time / moex time). Exits 2,
saying why, where PyTorch or a GPU is missing.
"""
import argparse
import json
import statistics
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moex-json", required=True, help="moex_bench_gpu --json output")
    parser.add_argument("--out", help="write the comparison as JSON here")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"gpu_layer_torch: PyTorch is not installed ({e}); nothing compared", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_layer_torch: PyTorch sees no GPU; nothing compared", file=sys.stderr)
        return 2
    with open(args.moex_json) as f:
        moex = json.load(f)
    T, H, F_, E, k = moex["tokens"], moex["hidden"], moex["width"], moex["experts"], moex["top_k"]
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)

    def uniform(shape, scale):
        return ((torch.rand(shape, generator=g, device=dev) * 2 - 1) * scale).to(torch.bfloat16)

    x = uniform((T, H), 1.0)
    wr = uniform((E, H), H ** -0.5)
    w1 = uniform((E, 2 * F_, H), H ** -0.5)
    w2 = uniform((E, H, F_), F_ ** -0.5)

    def forward():
        logits = (x @ wr.t()).float()
        probs = logits.softmax(dim=-1)
        w, idx = probs.topk(k, dim=-1)
        w = w / w.sum(dim=-1, keepdim=True)
        y = torch.zeros((T, H), dtype=torch.float32, device=dev)
        for e in range(E):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            gate, up = (x[tok] @ w1[e].t()).chunk(2, dim=-1)
            out = (F.silu(gate) * up) @ w2[e].t()
            y.index_add_(0, tok, out.float() * w[tok, slot, None])
        return y.to(torch.bfloat16)

    for _ in range(3):
        forward()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        forward()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    torch_ms = statistics.median(times)
    moex_ms = moex["layer_ms"]
    result = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "tokens": T, "hidden": H, "width": F_, "experts": E, "top_k": k, "reps": args.reps,
        "torch_ms": torch_ms, "torch_ms_min": min(times), "torch_ms_max": max(times),
        "moex_ms": moex_ms, "speedup": torch_ms / moex_ms,
    }
    print(f"layer forward, {T} tokens x top-{k} over {E} experts, hidden {H}, width {F_}, bf16:")
    print(f"  PyTorch (loop over experts): {torch_ms:.3f} ms (min {min(times):.3f}, max {max(times):.3f})")
    print(f"  moex kernels:                {moex_ms:.3f} ms")
    print(f"  speed-up: {torch_ms / moex_ms:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

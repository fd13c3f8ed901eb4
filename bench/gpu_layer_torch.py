#!/usr/bin/env python3
"""The single-GPU MoE layer forward of moex_bench_gpu beside PyTorch's, on
the same GPU and the same shapes, and beside `moex run`'s own step.

Two PyTorch layers, timed interleaved (each repetition runs both):
  loop     what a model file typically writes (Hugging Face's Mixtral and
           DeepSeek blocks): router GEMM, softmax, top-k, renormalise, then a
           Python loop over the experts (one host synchronisation each, in
           nonzero()) that gathers the expert's tokens and runs gate/up,
           SwiGLU and down in bf16, index_add-ing the weighted result;
  grouped  the strongest path PyTorch has for it (torchtitan's MoE): the
           routed pairs sorted by expert on the device, both projections as
           one torch._grouped_mm each over all experts (bf16, offsets on the
           device, no host synchronisation), the weighted index_add.
Both are checked against each other (relative error of the outputs).

moex's figures come from files: moex_bench_gpu's JSON (the kernel chain
alone: router GEMM to un-permute, timed in its own run) and, with
--moex-run-json, `moex run --device cuda --transport nccl --json` on a
config of the same layer (bench/gpu_layer.json): its step as the user gets
it, with the host layout, NCCL and the host copies of x and y.

  python3 bench/gpu_layer_torch.py --moex-json gpu-bench.json
      [--moex-run-json run-bench-layer-gpu.json] [--out FILE] [--reps 50]

Every time is the median over the repetitions (after 3 warm-up rounds) with
its p10-p90 spread; each ratio is a ratio of medians. Exits 2, saying why,
where PyTorch or a GPU is missing.
"""
import argparse
import json
import statistics
import sys


def spread(values):
    """Median, p10, p90, min, max of a list of milliseconds."""
    v = sorted(values)

    def at(q):
        return v[int(q * (len(v) - 1) + 0.5)]

    return {"median": statistics.median(v), "p10": at(0.1), "p90": at(0.9), "min": v[0], "max": v[-1]}


def text(s):
    return f"{s['median']:.3f} ms (p10-p90 {s['p10']:.3f}-{s['p90']:.3f})"


def moex_kernel_ms(moex):
    """The kernel chain's spread from moex_bench_gpu's JSON (either format)."""
    if "layer" in moex and isinstance(moex["layer"], dict):
        return moex["layer"]["ms"]
    return {"median": moex["layer_ms"]}  # the first format: one median, no spread


def moex_run_step(path, shape):
    """`moex run`'s step from its --json: medians over the steps after the
    first (the first builds buffers), milliseconds, and the phases."""
    with open(path) as f:
        run = json.load(f)
    steps = run["steps"][1:] or run["steps"]
    out = {"file": path, "model": run.get("model"), "tokens_per_step": run.get("tokens_per_step"),
           "hidden": run.get("hidden"), "top_k": run.get("top_k"), "steps_counted": len(steps)}
    out["step_ms"] = spread([1e3 * s["seconds"] for s in steps])
    for phase in ("route", "dispatch", "expert", "combine"):
        out[f"{phase}_ms"] = statistics.median(1e3 * s[f"{phase}_seconds"] for s in steps)
    out["same_shape"] = (run.get("hidden") == shape["hidden"] and run.get("top_k") == shape["top_k"]
                         and run.get("tokens_per_step") == shape["tokens"])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moex-json", required=True, help="moex_bench_gpu --json output")
    parser.add_argument("--moex-run-json", help="moex run --json output on the same layer (bench/gpu_layer.json)")
    parser.add_argument("--out", help="write the comparison as JSON here")
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    if args.reps < 2:
        print("gpu_layer_torch: --reps must be at least 2 (a spread needs two)", file=sys.stderr)
        return 2
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
    w1 = uniform((E, 2 * F_, H), H ** -0.5)  # gate and up rows, [E, 2F, H]
    w2 = uniform((E, H, F_), F_ ** -0.5)
    # _grouped_mm takes [E, K, N]; the transposed views keep the weights'
    # memory as a model holds it (column-major for the kernel).
    w1_t, w2_t = w1.transpose(-2, -1), w2.transpose(-2, -1)

    def route():
        logits = (x @ wr.t()).float()
        w, idx = logits.softmax(dim=-1).topk(k, dim=-1)
        return w / w.sum(dim=-1, keepdim=True), idx

    def forward_loop():
        w, idx = route()
        y = torch.zeros((T, H), dtype=torch.float32, device=dev)
        for e in range(E):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            gate, up = (x[tok] @ w1[e].t()).chunk(2, dim=-1)
            out = (F.silu(gate) * up) @ w2[e].t()
            y.index_add_(0, tok, out.float() * w[tok, slot, None])
        return y.to(torch.bfloat16)

    def forward_grouped():
        w, idx = route()
        flat = idx.reshape(-1)
        order = flat.argsort(stable=True)
        tok = order // k
        offs = torch.bincount(flat, minlength=E).cumsum(0).to(torch.int32)
        h = torch._grouped_mm(x[tok], w1_t, offs=offs)  # [T*k, 2F]
        gate, up = h.chunk(2, dim=-1)
        out = torch._grouped_mm(F.silu(gate) * up, w2_t, offs=offs)  # [T*k, H]
        y = torch.zeros((T, H), dtype=torch.float32, device=dev)
        y.index_add_(0, tok, out.float() * w.reshape(-1)[order, None])
        return y.to(torch.bfloat16)

    paths = {"loop": forward_loop, "grouped": forward_grouped}
    grouped_error = None
    try:
        reference, candidate = forward_loop().float(), forward_grouped().float()
        agreement = ((candidate - reference).norm() / reference.norm()).item()
    except (RuntimeError, AttributeError) as e:  # no _grouped_mm on this build or device
        grouped_error = f"{type(e).__name__}: {e}"
        paths.pop("grouped")
        agreement = None
    for _ in range(3):
        for fn in paths.values():
            fn()
    torch.cuda.synchronize()
    times = {name: [] for name in paths}
    for _ in range(args.reps):
        for name, fn in paths.items():
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times[name].append(start.elapsed_time(stop))
    torch_ms = {name: spread(t) for name, t in times.items()}
    kernels = moex_kernel_ms(moex)
    shape = {"tokens": T, "hidden": H, "width": F_, "experts": E, "top_k": k}
    result = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, **shape, "reps": args.reps,
        "statistic": "median over reps repetitions (3 warm-up rounds), the PyTorch paths interleaved; p10/p90 "
                     "spread; speed-ups are ratios of medians",
        "torch_loop_ms": torch_ms["loop"], "torch_grouped_mm_ms": torch_ms.get("grouped"),
        "torch_grouped_mm_error": grouped_error, "grouped_vs_loop_relative_error": agreement,
        "moex_kernels_ms": kernels,
        "speedup_vs_loop": torch_ms["loop"]["median"] / kernels["median"],
        "speedup_vs_grouped_mm": (torch_ms["grouped"]["median"] / kernels["median"]) if "grouped" in torch_ms else None,
    }
    print(f"layer forward, {T} tokens x top-{k} over {E} experts, hidden {H}, width {F_}, bf16; "
          f"median of {args.reps} (p10-p90), speed-ups are ratios of medians:")
    print(f"  PyTorch, loop over experts:      {text(torch_ms['loop'])}")
    if "grouped" in torch_ms:
        print(f"  PyTorch, torch._grouped_mm:      {text(torch_ms['grouped'])} "
              f"(output within {agreement:.1e} of the loop's)")
    else:
        print(f"  PyTorch, torch._grouped_mm:      not run ({grouped_error})")
    print(f"  moex kernel chain (moex_bench_gpu, its own run): {kernels['median']:.3f} ms")
    line = f"  moex kernels against the loop: {result['speedup_vs_loop']:.2f}x"
    if result["speedup_vs_grouped_mm"] is not None:
        line += f"; against torch._grouped_mm: {result['speedup_vs_grouped_mm']:.2f}x"
    print(line)
    if args.moex_run_json:
        run = moex_run_step(args.moex_run_json, shape)
        result["moex_run"] = run
        best = torch_ms.get("grouped", torch_ms["loop"])
        result["moex_run_vs_best_torch"] = best["median"] / run["step_ms"]["median"]
        print(f"  moex run's step (--device cuda, {run['steps_counted']} steps after the first): {text(run['step_ms'])}"
              f" = route {run['route_ms']:.3f} + dispatch {run['dispatch_ms']:.3f} + experts {run['expert_ms']:.3f}"
              f" + combine {run['combine_ms']:.3f} ms{'' if run['same_shape'] else ' (NOT the same shape)'}")
        print(f"  strongest PyTorch path / moex run's step: {result['moex_run_vs_best_torch']:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

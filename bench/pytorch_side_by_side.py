#!/usr/bin/env python3
"""PyTorch training throughput for the same model sinklm trains: the yardstick for
`sinklm bench train`.

  python3 bench/pytorch_side_by_side.py [--layers 6 --hidden 128 --heads 4 --vocab 4096
      --batch 16 --seq 256 --steps 30 --warmup 5 --threads 2]
      [--config-json FILE_OR_JSON] [--sinklm-json FILE] [--profile]
  python3 bench/pytorch_side_by_side.py --pairs 5 [--steps 8 --warmup 3] [--out FILE]

With --pairs N it measures both sides itself, alternating: N times `sinklm bench train
--json` (default config: pythia-14m shape, B=16, T=256), then this script's PyTorch run, each
in a fresh process, and reports every pair's ratio and the median. PyTorch is measured as
users run it and, in the same pairs, with glibc's allocator set as sinklm's training sets
its own (no mmap-served blocks, no heap trim: core/backend.ts retainFreedMemory), which
spares PyTorch the same page faults; both ratios are reported.

HF GPTNeoXForCausalLM (eager attention, float32, CPU), AdamW(1e-3, betas 0.9/0.95,
wd 0.1), grad clip 1.0, on random token batches: the data pipeline is not what is being
measured. --steps counts all steps; the first --warmup are not timed (allocator, thread
pool and autograd caches settle there). Prints one JSON line on stdout.
"""
import argparse
import json
import os
import sys
import time

import torch


def load_json_arg(s):
    """A path to a JSON file, or the JSON text itself."""
    if s.lstrip().startswith("{"):
        return json.loads(s)
    with open(s) as f:
        return json.load(f)


def pick(d, *names):
    for n in names:
        if d.get(n) is not None:
            return d[n]
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # defaults are None so we can tell "given on the command line" from "not given":
    # command line > --config-json > the Pythia-14M-shaped defaults below.
    for name, help_ in [("layers", "6"), ("hidden", "128"), ("heads", "4"), ("vocab", "4096"),
                        ("intermediate", "4 x hidden"), ("batch", "16"), ("seq", "256"),
                        ("steps", "30, warmup included"), ("warmup", "5"), ("threads", "2")]:
        ap.add_argument(f"--{name}", type=int, help=f"default {help_}")
    ap.add_argument("--rotary-pct", type=float, help="default 0.25")
    ap.add_argument("--config-json", help="the `config` object of `sinklm bench train --json` "
                    "(or that whole output), as a file or inline JSON")
    ap.add_argument("--sinklm-json", help="output of `sinklm bench train --json`: adds the ratio")
    ap.add_argument("--pairs", type=int, help="measure sinklm and PyTorch alternately this many times, "
                    "each in a fresh process; print the per-pair ratios and their median")
    ap.add_argument("--out", help="with --pairs: also write the JSON result to this file")
    ap.add_argument("--profile", action="store_true",
                    help="after the timed steps, profile one more with torch.profiler and print "
                    "its table (self CPU time per op) on stderr: where PyTorch's time goes")
    args = ap.parse_args()
    if args.pairs:
        return run_pairs(args)

    cfg = {}
    if args.config_json:
        whole = load_json_arg(args.config_json)
        # The whole bench output carries batch/seq/threads at the top and the model under
        # `config`: take the run shape from the top, the model from `config`.
        cfg = {**{k: whole[k] for k in ("batch", "seq", "threads") if k in whole}, **whole.get("config", whole)}
    defaults = dict(layers=6, hidden=128, heads=4, vocab=4096, batch=16, seq=256,
                    steps=30, warmup=5, threads=2, rotary_pct=0.25)
    from_cfg = dict(
        layers=pick(cfg, "num_hidden_layers", "layers"),
        hidden=pick(cfg, "hidden_size", "hidden"),
        heads=pick(cfg, "num_attention_heads", "heads"),
        vocab=pick(cfg, "vocab_size", "vocab"),
        intermediate=pick(cfg, "intermediate_size", "intermediate"),
        rotary_pct=pick(cfg, "rotary_pct"),
        batch=pick(cfg, "batch", "batch_size"),
        seq=pick(cfg, "seq", "seq_len", "context_length", "context", "block_size"),
        steps=pick(cfg, "steps"), warmup=pick(cfg, "warmup"), threads=pick(cfg, "threads"),
    )
    a = {}
    for k in set(defaults) | set(from_cfg):
        cli = getattr(args, k, None)
        a[k] = cli if cli is not None else from_cfg.get(k) if from_cfg.get(k) is not None else defaults.get(k)
    a["intermediate"] = a["intermediate"] or 4 * a["hidden"]
    if a["steps"] <= a["warmup"]:
        sys.exit(f"pytorch_side_by_side: --steps ({a['steps']}) must exceed --warmup ({a['warmup']})")

    torch.set_num_threads(a["threads"])
    torch.manual_seed(0)
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()

    config = GPTNeoXConfig(
        vocab_size=a["vocab"], hidden_size=a["hidden"], num_hidden_layers=a["layers"],
        num_attention_heads=a["heads"], intermediate_size=a["intermediate"],
        rotary_pct=a["rotary_pct"], rotary_emb_base=10000, max_position_embeddings=max(a["seq"], 2048),
        layer_norm_eps=1e-5, use_parallel_residual=True, hidden_act="gelu",
        tie_word_embeddings=False, hidden_dropout=0.0, attention_dropout=0.0, use_cache=False,
    )
    model = GPTNeoXForCausalLM._from_config(config, attn_implementation="eager", dtype=torch.float32)
    model.train()
    params = sum(p.numel() for p in model.parameters())

    # nanoGPT/Pythia convention: decay matrices and embeddings, not biases or LayerNorm gains
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95))

    B, T = a["batch"], a["seq"]
    g = torch.Generator().manual_seed(0)
    t0 = None
    for step in range(a["steps"]):
        if step == a["warmup"]:
            t0, c0 = time.perf_counter(), time.process_time()
        x = torch.randint(0, a["vocab"], (B, T), generator=g)
        loss = model(input_ids=x, labels=x).loss  # HF shifts labels inside
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        print(f"step {step}: loss {loss.item():.4f}", file=sys.stderr)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    timed = a["steps"] - a["warmup"]

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        x = torch.randint(0, a["vocab"], (B, T), generator=g)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20), file=sys.stderr)

    out = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "tokens_per_s": round(B * T * timed / elapsed, 1),
        "ms_per_step": round(1000 * elapsed / timed, 2),
        "batch": B, "seq": T, "threads": a["threads"], "params": params,
        "config": {"num_hidden_layers": a["layers"], "hidden_size": a["hidden"],
                   "num_attention_heads": a["heads"], "intermediate_size": a["intermediate"],
                   "vocab_size": a["vocab"], "rotary_pct": a["rotary_pct"]},
        "steps_timed": timed,
        # CPU seconds used / (wall seconds x threads): well below 1 means other processes
        # took the cores and the figure understates PyTorch; rerun on an idle machine.
        "cpu_utilization": round(cpu / (elapsed * a["threads"]), 2),
        "loadavg_1min": os.getloadavg()[0],
    }
    if args.sinklm_json:
        s = load_json_arg(args.sinklm_json)
        out["sinklm_tokens_per_s"] = s.get("tokens_per_s")
        out["sinklm_backend"] = s.get("backend")
        if s.get("tokens_per_s"):
            out["ratio_sinklm_over_pytorch"] = round(s["tokens_per_s"] / out["tokens_per_s"], 3)
            print(f"sinklm ({s.get('backend')}) / pytorch = {out['ratio_sinklm_over_pytorch']}",
                  file=sys.stderr)
    print(json.dumps(out))


RETAINED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}


def run_pairs(args):
    """Alternating sinklm / PyTorch / PyTorch-with-retained-memory runs, each a fresh process."""
    import statistics
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    steps, warmup = args.steps or 8, args.warmup or 3

    def run(cmd, env=None):
        r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env={**os.environ, **(env or {})})
        if r.returncode != 0:
            sys.exit(f"pytorch_side_by_side: {' '.join(cmd[:3])} failed: {r.stderr.strip()[-400:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    pairs = []
    for i in range(args.pairs):
        s = run(["node", "bin/sinklm", "bench", "train", "--json", "--steps", str(steps), "--warmup", str(min(warmup, steps - 1))])
        me = [sys.executable, os.path.abspath(__file__), "--config-json", json.dumps(s), "--steps", str(steps), "--warmup", str(warmup)]
        p = run(me)
        q = run(me, RETAINED)
        pair = {"sinklm": round(s["tokens_per_s"], 1), "sinklm_cpu_utilization": round(s["cpu_utilization"], 2),
                "pytorch": p["tokens_per_s"], "pytorch_cpu_utilization": p["cpu_utilization"],
                "pytorch_retained": q["tokens_per_s"],
                "ratio": round(s["tokens_per_s"] / p["tokens_per_s"], 3),
                "ratio_retained": round(s["tokens_per_s"] / q["tokens_per_s"], 3),
                "loadavg_1min": round(os.getloadavg()[0], 2)}
        print(f"pair {i + 1}: sinklm {pair['sinklm']:.0f}  pytorch {pair['pytorch']:.0f} ({pair['ratio']:.3f}x)"
              f"  pytorch, retained memory {pair['pytorch_retained']:.0f} ({pair['ratio_retained']:.3f}x)", file=sys.stderr)
        pairs.append(pair)
        backend, kernels, config = s.get("backend"), s.get("kernels"), s.get("config")
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "backend": backend,
        "kernels": kernels, "config": config, "batch": s.get("batch"), "seq": s.get("seq"),
        "steps": steps, "warmup": warmup, "pairs": pairs,
        "median_ratio": statistics.median(p["ratio"] for p in pairs),
        "median_ratio_retained": statistics.median(p["ratio_retained"] for p in pairs),
        "median_sinklm": statistics.median(p["sinklm"] for p in pairs),
        "median_pytorch": statistics.median(p["pytorch"] for p in pairs),
        "median_pytorch_retained": statistics.median(p["pytorch_retained"] for p in pairs),
        "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "cores": os.cpu_count(),
    }
    text = json.dumps(out, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

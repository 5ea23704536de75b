#!/usr/bin/env python3
"""Check a sinklm checkpoint directory with HuggingFace, outside sinklm.

  python3 scripts/check_hf_checkpoint.py CKPT_DIR [--tokens-json F] [--compare SCORE_JSON] [--tol 1e-4]

The contract says a checkpoint is a directory GPTNeoXForCausalLM loads as it is. This
loads it that way (no conversion), runs one full-context forward and prints, on stdout,
{"tokens": [...], "nll": [...]} with nll[i] = loss of predicting tokens[i+1] (natural
log) -- the same convention as `sinklm score --json` (plus "max_abs_diff" with --compare).

Tokens come from --tokens-json (a JSON list, or {"tokens": [...]}); else from the
--compare file; else from CKPT_DIR/expected.json (the test fixtures have one).
With --compare SCORE_JSON (the output of `sinklm score --json`) it reports the max abs
NLL difference and exits 1 if it exceeds --tol.

Modes softmax1 and logit change the attention itself, which HF's GPT-NeoX cannot run:
for them it only checks that every other weight loads strictly, and exits 0.
Exit codes: 0 ok, 1 mismatch, 2 bad input.
"""
import argparse
import json
import os
import sys

import torch


def die(msg, code=2):
    print(f"check_hf_checkpoint: {msg}", file=sys.stderr)
    sys.exit(code)


def read_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        die(f"{path}: {what} not found")
    except json.JSONDecodeError as e:
        die(f"{path}: {what} is not valid JSON ({e})")


def tokens_of(obj, path):
    toks = obj.get("tokens") if isinstance(obj, dict) else obj
    if not isinstance(toks, list) or not all(isinstance(t, int) for t in toks):
        die(f'{path}: expected a JSON list of token ids or {{"tokens": [...]}}')
    if len(toks) < 2:
        die(f"{path}: need at least 2 tokens to score")
    return toks


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt", help="checkpoint directory (config.json + model.safetensors)")
    ap.add_argument("--tokens-json", help='JSON list of ids, or {"tokens": [...]}')
    ap.add_argument("--compare", help="output of `sinklm score --json` to compare against")
    ap.add_argument("--tol", type=float, default=1e-4, help="max abs NLL difference allowed")
    args = ap.parse_args()

    # imported late so --help is instant
    from transformers import GPTNeoXForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()  # keep stderr to our own lines
    hf_logging.disable_progress_bar()

    cfg_path = os.path.join(args.ckpt, "config.json")
    cfg = read_json(cfg_path, "config.json")
    if cfg.get("model_type") != "gpt_neox":
        die(f'{cfg_path}: model_type is {cfg.get("model_type")!r}, expected "gpt_neox"')
    sinklm = cfg.get("sinklm") or {}
    mode = sinklm.get("sink_mode", "none")  # a plain Pythia checkpoint has no sinklm object
    sink_id = sinklm.get("sink_token_id")
    if mode not in ("none", "token", "softmax1", "logit"):
        die(f"{cfg_path}: sinklm.sink_mode {mode!r} is not none|token|softmax1|logit")
    info = {"mode": mode, "sink_token_id": sink_id}

    # The tokenizer is part of the checkpoint; make sure HF's own library reads it.
    tok_path = os.path.join(args.ckpt, "tokenizer.json")
    if os.path.exists(tok_path):
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(tok_path)
        info["tokenizer_vocab"] = tok.get_vocab_size(with_added_tokens=True)
        if info["tokenizer_vocab"] > cfg.get("vocab_size", 0):
            die(f"{tok_path}: tokenizer has {info['tokenizer_vocab']} ids but config vocab_size is {cfg.get('vocab_size')}")
    else:
        info["tokenizer_vocab"] = None

    # Load exactly as a user of the ecosystem would: no key mapping, no config edits.
    try:
        model, loading = GPTNeoXForCausalLM.from_pretrained(
            args.ckpt, attn_implementation="eager", dtype=torch.float32, output_loading_info=True)
    except Exception as e:  # HF raises many types; any of them means "does not load"
        die(f"{args.ckpt}: HF GPTNeoXForCausalLM cannot load it: {e}")
    model.eval()
    missing = sorted(loading["missing_keys"])
    unexpected = sorted(loading["unexpected_keys"])
    mismatched = sorted(str(m) for m in loading["mismatched_keys"])
    # The only tensors HF may legitimately not know are the per-head sink logits of mode logit.
    sinks = [k for k in unexpected if k.endswith("attention.sinks")]
    unexpected = [k for k in unexpected if k not in sinks]
    if missing or unexpected or mismatched:
        die(f"{args.ckpt}: weights do not load strictly: missing {missing}, "
            f"unexpected {unexpected}, mismatched {mismatched}")
    if mode == "logit" and len(sinks) != cfg["num_hidden_layers"]:
        die(f"{args.ckpt}: mode logit needs attention.sinks in every layer, found {len(sinks)}")
    if mode != "logit" and sinks:
        die(f"{args.ckpt}: attention.sinks tensors present but sink_mode is {mode}")
    info["params"] = sum(p.numel() for p in model.parameters())
    print(f"loaded {args.ckpt}: {json.dumps(info)}", file=sys.stderr)

    if mode in ("softmax1", "logit"):
        print(f"sink_mode {mode}: HF GPT-NeoX cannot run this attention variant; "
              "all other weights load strictly, nothing to score.", file=sys.stderr)
        return 0

    # tokens: explicit file, else the file we compare to, else the fixture's expected.json
    score = read_json(args.compare, "--compare file") if args.compare else None
    if args.tokens_json:
        tokens = tokens_of(read_json(args.tokens_json, "--tokens-json file"), args.tokens_json)
    elif score is not None:
        tokens = tokens_of(score, args.compare)
    elif os.path.exists(os.path.join(args.ckpt, "expected.json")):
        p = os.path.join(args.ckpt, "expected.json")
        tokens = tokens_of(read_json(p, "expected.json"), p)
    else:
        die("no tokens: give --tokens-json F or --compare SCORE_JSON")
    bad = [t for t in tokens if not 0 <= t < cfg["vocab_size"]]
    if bad:
        die(f"token ids out of range 0..{cfg['vocab_size'] - 1}: {bad[:5]}")
    if mode == "token" and tokens[0] != sink_id:
        print(f"warning: sink-token model but tokens[0] is {tokens[0]}, not the sink {sink_id}",
              file=sys.stderr)
    if len(tokens) > cfg.get("max_position_embeddings", len(tokens)):
        print(f"warning: {len(tokens)} tokens exceed max_position_embeddings "
              f"{cfg['max_position_embeddings']}", file=sys.stderr)

    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    t = torch.tensor(tokens)
    nll = (-logp[:-1].gather(1, t[1:, None])[:, 0]).tolist()
    out = {"tokens": tokens, "nll": nll}
    status = 0
    if score is not None:
        other = score.get("nll") if isinstance(score, dict) else None
        if not isinstance(other, list):
            die(f'{args.compare}: no "nll" list')
        if score.get("tokens") not in (None, tokens):
            die(f"{args.compare}: its tokens differ from the ones scored here")
        if len(other) != len(nll):
            die(f"{args.compare}: {len(other)} nll values, expected {len(nll)}")
        diff = max(abs(a - b) for a, b in zip(nll, other))
        out["max_abs_diff"] = diff
        status = 0 if diff <= args.tol else 1
        print(f"max abs nll difference vs {args.compare}: {diff:.3g} "
              f"({'ok' if status == 0 else 'FAIL'}, tol {args.tol:g}); mean nll "
              f"HF {sum(nll) / len(nll):.6f}, sinklm {sum(other) / len(other):.6f}", file=sys.stderr)
    print(json.dumps(out))
    return status

if __name__ == "__main__":
    sys.exit(main())

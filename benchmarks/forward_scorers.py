"""CMAB / ACE forward scorers: batched hook-reduced attention vs one sample at a time with ``output_attentions=True``.

    python benchmarks/forward_scorers.py [--samples 32] [--batch-size 16] [--response-tokens 64,512]
                                         [--memory-tokens 2048] [--budget-mib 1024] [--threads N]
                                         [--device cpu|cuda] [--dtype float32|bfloat16|float16]

Two measurements, same machine, one run:

1. Throughput (samples/s) on the shipped tiny Qwen2.5-VL (2 layers, 4 heads) and on a deeper variant of it
   (``--deep-layers`` 12 layers, ``--deep-heads`` 8 heads, random weights): ``samples`` synthetic rows (image +
   question, chat template with the system prompt) followed by a response of ``response-tokens`` random tokens
   (each length of the list: 64 is a short answer, 512 a reasoning response of the length the papers decode, up to
   1024 new tokens).
   * ours: :func:`verl_difficulty.scoring.scorers.cmab.attention_balance` (paper mode) and
     :meth:`AceScorer.measure` (the scorers' own code path): batches of ``batch-size`` requests, attention reduced
     inside the per-layer hooks;
   * official approach: one sample per forward with ``output_attentions=True`` (every layer's attention kept), then
     the same quantities from the returned tensors (vectorised per layer with torch, not per-token Python loops:
     the baseline is not handicapped). The values of both paths are checked equal.
2. Peak attention memory for ONE long sample (``memory-tokens`` positions) on the deeper model: the bytes of attention
   weight tensors alive at the same time (tracked exactly with weakref finalizers on every attention tensor the
   attention modules return), and the peak resident-memory growth of the process during the pass (``ru_maxrss``,
   each path in a fresh subprocess). The all-layers attention of that sequence exceeds ``--budget-mib`` (a stated
   attention-memory budget); the hook path stays at one layer's tensor.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verl_difficulty.config import parse  # noqa: E402
from verl_difficulty.models.forward import ForwardRequest, HFForward, decoder_layers  # noqa: E402
from verl_difficulty.scoring.scorers.ace import AceScorer, ace_score  # noqa: E402
from verl_difficulty.scoring.scorers.cmab import CmabParams, attention_balance, paper_layers  # noqa: E402

MIB = 2**20


def build(tiny: str, layers: int = 0, heads: int = 0, device: str = "cpu",
          dtype: torch.dtype = torch.float32) -> HFForward:
    """The tiny checkpoint (``layers == 0``) or its architecture with more layers/heads, eager attention, on
    ``device`` in ``dtype``."""
    from transformers import AutoConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from verl_difficulty.models.generation import load_generation_model
    from verl_difficulty.scoring.backends import _load_processor

    tok, proc = _load_processor(tiny)
    if not layers:
        return HFForward(load_generation_model(tiny, dtype=dtype, attn_implementation="eager").to(device), tok, proc)
    cfg = AutoConfig.from_pretrained(tiny).to_dict()
    text = {k: v for k, v in cfg["text_config"].items() if k != "layer_types"}
    hidden = 16 * heads  # head dim 16, as the tiny model (its rotary sections)
    text.update(num_hidden_layers=layers, max_window_layers=layers, num_attention_heads=heads,
                num_key_value_heads=heads // 2, hidden_size=hidden, intermediate_size=2 * hidden)
    cfg["text_config"] = text
    cfg["vision_config"]["out_hidden_size"] = hidden
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration._from_config(Qwen2_5_VLConfig(**cfg), attn_implementation="eager")
    return HFForward(model.to(device=device, dtype=dtype).eval(), tok, proc)


def make_requests(fwd: HFForward, n: int, response_tokens: int, seed: int = 0) -> list[ForwardRequest]:
    """Synthetic rows (image + question, the chat template) + random response tokens."""
    from verl_difficulty.data.rows import prepare_row
    from verl_difficulty.data.synthetic import generate_rows
    from verl_difficulty.scoring.backends import _chat_text

    g = torch.Generator().manual_seed(seed)
    vocab = len(fwd.tokenizer) - 16  # below the special tokens
    out = []
    for i, raw in enumerate(generate_rows(n, seed=seed)):
        row = prepare_row(raw, i)
        text = _chat_text(fwd.tokenizer, fwd.processor, row.messages)
        ids = fwd.processor(text=[text], images=row.images, return_tensors="pt")["input_ids"][0].tolist()
        resp = torch.randint(0, vocab, (response_tokens,), generator=g).tolist()
        out.append(ForwardRequest(prompt_ids=ids, response_ids=resp, images=list(row.images)))
    return out


# ----------------------------------------------------------------------------------------------------------------
# The official approach: one sample, output_attentions=True
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def official(fwd: HFForward, req: ForwardRequest, which: str) -> float:
    _, inputs = fwd._batch([req])
    att = fwd.model.model(**inputs, output_attentions=True, use_cache=False).attentions  # all L layers kept
    n_prompt = len(req.prompt_ids)
    if which == "ace":
        a = att[-1][0].float().mean(0)[n_prompt:, n_prompt:]
        return ace_score(a.double().cpu().numpy())
    ids = torch.tensor(req.prompt_ids, device=att[0].device)
    img = ids == fwd.image_token_id
    logs = []
    for layer in paper_layers(len(att)):
        rows = att[layer][0].float().mean(0)[n_prompt:, :n_prompt]  # (response, prompt)
        logs.append(torch.log(rows[:, img].sum(-1).double() / rows[:, ~img].sum(-1).double() + 1e-8))
    return float(torch.exp(torch.stack(logs).mean(0)).mean())


@torch.no_grad()
def official_loop(fwd: HFForward, req: ForwardRequest, which: str) -> float:
    """As :func:`official`, with the released code's loop structure: per layer, per response token (CMAB), per
    column (ACE), one attention row at a time."""
    _, inputs = fwd._batch([req])
    att = fwd.model.model(**inputs, output_attentions=True, use_cache=False).attentions
    n_prompt, n = len(req.prompt_ids), len(req.prompt_ids) + len(req.response_ids)
    if which == "ace":
        a = att[-1][0].mean(0)
        cols = [sum(math.log(2.0 * float(a[i, j])) for i in range(j, n)) for j in range(n_prompt, n)]
        return max(cols)
    img = [k for k in range(n_prompt) if req.prompt_ids[k] == fwd.image_token_id]
    txt = [k for k in range(n_prompt) if req.prompt_ids[k] != fwd.image_token_id]
    layers = paper_layers(len(att))
    total = 0.0
    for t in range(n_prompt, n):
        logs = 0.0
        for layer in layers:
            row = att[layer][0, :, t, :].mean(0)
            logs += math.log(float(row[img].sum()) / float(row[txt].sum()) + 1e-8)
        total += math.exp(logs / len(layers))
    return total / (n - n_prompt)


def ours(fwd: HFForward, reqs: list, which: str, batch_size: int) -> list[float]:
    out = []
    for s in range(0, len(reqs), batch_size):
        chunk = reqs[s : s + batch_size]
        if which == "ace":
            out.extend(AceScorer().measure(fwd, chunk))
        else:
            out.extend(attention_balance(fwd, chunk, parse(CmabParams, {}, "cmab")))
    return out


def _best_of(repeats: int, fn) -> tuple[float, list]:
    """(min wall time over ``repeats`` calls, the last result): the machine is shared, the minimum is the cost."""
    best, got = float("inf"), None
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        got = fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best, got


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def throughput(fwd: HFForward, reqs: list, batch_size: int, repeats: int) -> list[dict]:
    rows = []
    for which in ("cmab", "ace"):
        ours(fwd, reqs[:batch_size], which, batch_size)  # warm-up
        official(fwd, reqs[0], which)
        t_ours, got = _best_of(repeats, lambda: ours(fwd, reqs, which, batch_size))
        t_ref, ref = _best_of(repeats, lambda: [official(fwd, r, which) for r in reqs])
        t_loop, loop = _best_of(1, lambda: [official_loop(fwd, r, which) for r in reqs])
        err = max(abs(a - b) / max(abs(b), 1e-12) for a, b, c in zip(got, ref, loop) for b in (b, c))
        rows.append({"scorer": which, "ours_sps": len(reqs) / t_ours, "official_sps": len(reqs) / t_ref,
                     "speedup": t_ref / t_ours, "loop_sps": len(reqs) / t_loop, "loop_speedup": t_loop / t_ours,
                     "max_rel_diff": err})
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Memory: attention bytes alive, and peak RSS growth (in a fresh subprocess per path)
# ----------------------------------------------------------------------------------------------------------------
class AliveAttention:
    """Counts the bytes of attention weight tensors alive at once (weakref finalizers on every returned tensor)."""

    def __init__(self, model):
        self.alive = self.peak = 0
        self.handles = [layer.self_attn.register_forward_hook(self._hook) for layer in decoder_layers(model)]

    def _hook(self, module, args, output):
        w = output[1]
        if w is None:  # a layer whose attention no callback reads computes none
            return
        self.alive += w.nbytes
        self.peak = max(self.peak, self.alive)
        weakref.finalize(w, self._freed, w.nbytes)

    def _freed(self, n: int) -> None:
        self.alive -= n


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0), so VmHWM measures the pass only."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(tiny: str, path: str, layers: int, heads: int, tokens: int, device: str = "cpu",
                 dtype: torch.dtype = torch.float32) -> dict:
    fwd = build(tiny, layers, heads, device, dtype)
    req = make_requests(fwd, 1, 8)[0]
    req.response_ids = (req.response_ids * tokens)[: max(1, tokens - len(req.prompt_ids))]
    probe = AliveAttention(fwd.model)
    before = _status_mib("VmRSS")
    reset = _reset_peak_rss()
    if path == "hooks":
        value = attention_balance(fwd, [req], parse(CmabParams, {}, "cmab"))[0]
    else:
        value = official(fwd, req, "cmab")
    peak = _status_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"path": path, "value": value, "T": len(req.prompt_ids) + len(req.response_ids),
            "attention_peak_mib": probe.peak / MIB, "rss_growth_mib": peak - before}


def memory(tiny: str, layers: int, heads: int, tokens: int, device: str, dtype: str) -> list[dict]:
    out = []
    for path in ("hooks", "official"):
        cmd = [sys.executable, __file__, "--_memory-child", path, "--_tiny", tiny, "--deep-layers", str(layers),
               "--deep-heads", str(heads), "--memory-tokens", str(tokens), "--device", device, "--dtype", dtype]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--response-tokens", default="64,512", help="comma list of response lengths")
    ap.add_argument("--deep-layers", type=int, default=12)
    ap.add_argument("--deep-heads", type=int, default=8)
    ap.add_argument("--memory-tokens", type=int, default=2048)
    ap.add_argument("--budget-mib", type=float, default=1024.0, help="attention-memory budget to compare against")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per path (the minimum is reported)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (the models and all passes)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--_memory-child", dest="child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_tiny", dest="tiny", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.child:
        print(json.dumps(memory_child(args.tiny, args.child, args.deep_layers, args.deep_heads, args.memory_tokens,
                                      args.device, dtype)))
        return
    from verl_difficulty.models.tiny import build_tiny_model_dir

    tiny = build_tiny_model_dir(os.path.join(tempfile.gettempdir(), "vd-bench-tiny"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device} {args.dtype}; "
          f"{args.samples} samples, "
          f"batch {args.batch_size}, response {args.response_tokens} tokens, best of {args.repeats}")
    print("official = one sample per pass with output_attentions=True, reduced per layer with torch; official loop = "
          "the same, reduced row by row in Python (the released code's loop structure)")
    print(f"{'model':<22}{'resp':>5} {'scorer':<7}{'ours/s':>9}{'official/s':>12}{'speedup':>9}{'loop/s':>9}"
          f"{'speedup':>9}{'max rel diff':>14}")
    lengths = [int(x) for x in str(args.response_tokens).split(",") if x.strip()]
    rows = []
    for label, layers, heads in (("tiny (2 L, 4 H)", 0, 0),
                                 (f"deep ({args.deep_layers} L, {args.deep_heads} H)", args.deep_layers,
                                  args.deep_heads)):
        fwd = build(tiny, layers, heads, args.device, dtype)
        for n_resp in lengths:
            reqs = make_requests(fwd, args.samples, n_resp)
            for r in throughput(fwd, reqs, args.batch_size, args.repeats):
                rows.append(r)
                print(f"{label:<22}{n_resp:>5} {r['scorer']:<7}{r['ours_sps']:>9.1f}{r['official_sps']:>12.1f}"
                      f"{r['speedup']:>8.1f}x{r['loop_sps']:>9.1f}{r['loop_speedup']:>8.1f}x"
                      f"{r['max_rel_diff']:>14.1e}")
    for key, what in (("speedup", "official (vectorised)"), ("loop_speedup", "official loop")):
        lo, hi = min(r[key] for r in rows), max(r[key] for r in rows)
        print(f"target >= 5x vs {what}: {lo:.1f}x .. {hi:.1f}x: "
              f"{'OK' if lo >= 5 else 'met on ' + str(sum(r[key] >= 5 for r in rows)) + ' of ' + str(len(rows))}")
    mem = memory(tiny, args.deep_layers, args.deep_heads, args.memory_tokens, args.device, args.dtype)
    t = mem[0]["T"]
    layer_mib = args.deep_heads * t * t * dtype.itemsize / MIB
    print(f"\nmemory, one sample of T = {t} positions, deep model ({args.deep_layers} layers x {args.deep_heads} heads,"
          f" {args.dtype}): one layer's attention = {layer_mib:.0f} MiB, all layers = {layer_mib * args.deep_layers:.0f} "
          f"MiB; budget {args.budget_mib:.0f} MiB")
    print(f"{'path':<10}{'attention alive peak':>22}{'peak RSS growth':>18}{'fits budget':>13}{'CMAB ratio':>12}")
    for m in mem:
        fits = "yes" if m["attention_peak_mib"] <= args.budget_mib else "NO"
        print(f"{m['path']:<10}{m['attention_peak_mib']:>18.0f} MiB{m['rss_growth_mib']:>14.0f} MiB{fits:>13}"
              f"{m['value']:>12.4f}")
    print(f"ratio official/hooks: attention {mem[1]['attention_peak_mib'] / mem[0]['attention_peak_mib']:.1f}x, "
          f"RSS growth {mem[1]['rss_growth_mib'] / max(mem[0]['rss_growth_mib'], 1e-9):.1f}x")


if __name__ == "__main__":
    main()

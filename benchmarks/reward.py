"""Reward grading throughput: responses graded per second per worker, on a mixed set, with the time limit on.

    python benchmarks/reward.py [--n 40] [--timeout 5] [--seed 0]

One "worker" is one grader subprocess fed sequentially (what one reward-loop worker does when it grades one response
at a time; with ``num_procs`` processes it grades that many in parallel). Every response is distinct (random numbers),
so math-verify's parse caches do not flatter the numbers. Each response goes through the same code as the reward
managers after decoding (:func:`verl_difficulty.rewards.functions.score_response`: UTF-8/empty checks, format rule on
the full text, truncation to the last ``max_chars`` characters, grading in the subprocess with the hard time limit).
The same set is also graded inline (in this process, no subprocess, no time limit, adversarial items skipped) to show
the subprocess overhead.

``--reward-loop`` also runs the non-adversarial items through verl's real ``RewardLoopWorker`` (one worker, its
manager's default 2 grader processes, all responses of a batch awaited concurrently as ``compute_score_batch`` does),
with a tiny byte-level BPE tokenizer built in code: responses per second per reward-loop worker, decoding included.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verl_difficulty.rewards.config import resolve_settings  # noqa: E402
from verl_difficulty.rewards.functions import score_response  # noqa: E402
from verl_difficulty.rewards.pool import SafeGrader  # noqa: E402
from verl_difficulty.schema import ACC  # noqa: E402


def make_items(n: int, seed: int) -> list[tuple[str, str, str, object, str]]:
    """(category, manager, response, ground_truth, task_type)."""
    rng = random.Random(seed)
    items = []
    think = "<think>Let me work this out step by step. {}</think> "
    for _ in range(n):
        a, b = rng.randint(1, 50), rng.randint(2, 60)
        fr = Fraction(a, b)
        gt = f"\\frac{{{fr.numerator}}}{{{fr.denominator}}}" if fr.denominator != 1 else str(fr.numerator)
        k = rng.randint(2, 5)
        forms = [f"\\frac{{{a * k}}}{{{b * k}}}", f"{a * k}/{b * k}", f"\\dfrac{{{a}}}{{{b}}}"]
        if 1000 % fr.denominator == 0 or fr.denominator in (2, 4, 5, 8, 10, 16, 20, 25):
            forms.append(str(float(fr)))
        items.append(("math_correct", "math_acc_format",
                      think.format(f"{a} over {b}.") + f"The answer is \\boxed{{{rng.choice(forms)}}}.", gt, ""))
        wrong = fr + Fraction(rng.randint(1, 9), rng.randint(2, 9))
        items.append(("math_wrong", "math_acc_format",
                      think.format("Hmm.") + f"\\boxed{{\\frac{{{wrong.numerator}}}{{{wrong.denominator}}}}}", gt, ""))
        u = rng.randint(2, 500)
        items.append(("math_units_pct", "math_acc_format",
                      think.format("Units.") + rng.choice([f"\\boxed{{{u}\\text{{ cm}}}}", f"\\boxed{{{u}\\%}}",
                                                           f"\\boxed{{{u} meters}}", f"\\boxed{{\\${u}}}"]),
                      str(u), ""))
        letter = rng.choice("ABCDE")
        items.append(("multiple_choice", "math_acc_format",
                      think.format("Options.") + rng.choice([f"\\boxed{{({letter})}}", f"\\boxed{{{letter}}}",
                                                             f"\\boxed{{{letter}) {u}}}"]),
                      rng.choice([letter, letter if rng.random() < 0.7 else "A"]), ""))
        filler = " ".join(rng.choice(["so", "then", "we", "get", f"{rng.randint(0, 99)}", "+", "=", "x"])
                          for _ in range(6000))
        items.append(("long_30k_chars", "math_acc_format", f"<think>{filler}</think> \\boxed{{{u}}}", str(u), ""))
        items.append(("r1v", "r1v_acc", think.format("R1-V.") + f"<answer>{rng.choice([str(u), f'{u}.0'])}</answer>",
                      f"<answer> {u} </answer>", ""))
        x, y = rng.randint(0, 300), rng.randint(0, 300)
        w, h = rng.randint(10, 200), rng.randint(10, 200)
        dx = rng.randint(-20, 20)
        items.append(("bbox", "perception", think.format("Box.") + f"<answer>[{x + dx}, {y}, {x + w + dx}, {y + h}]"
                      "</answer>", [x, y, x + w, y + h], "bbox"))
        word = "".join(rng.choice("abcdefghij klmnop") for _ in range(rng.randint(5, 40))).strip() or "abc"
        noisy = "".join(c if rng.random() > 0.2 else rng.choice("xyz") for c in word)
        items.append(("ocr", "perception", think.format("Read.") + f"<answer>{noisy.upper()}</answer>", word, "ocr"))
        c = rng.randint(0, 15)
        names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                 "twelve", "thirteen", "fourteen", "fifteen"]
        items.append(("count", "perception", think.format("Count.") + f"<answer>{rng.choice([str(c), names[c]])}"
                      "</answer>", c, "count"))
    adversarial = [
        "<think>w</think> \\boxed{10^{10^{10}}}",
        "<think>w</think> \\boxed{9^{9^{9^{9}}}}",
        "<think>w</think> \\boxed{" + "(" * 2000 + "1" + ")" * 2000 + "}",
    ]
    for a in adversarial:
        items.append(("adversarial", "math_acc_format", a, "5", ""))
    hostile_cheap = [b"\\boxed{1} \xff\xfe", "", "x" * 1_000_000, "<think>w</think> \\boxed{1"]
    for h in hostile_cheap:
        items.append(("hostile_cheap", "math_acc_format", h, "1", ""))
    return items


def run(items, grader: SafeGrader, skip_adversarial: bool = False):
    per = {}
    for cat, manager, resp, gt, task in items:
        if skip_adversarial and cat == "adversarial":
            continue
        settings = resolve_settings(manager)
        t = time.perf_counter()
        _, info = score_response(manager, resp, gt, settings, grader, task_type=task)
        dt = time.perf_counter() - t
        d = per.setdefault(cat, {"times": [], "acc": [], "timeouts": 0})
        d["times"].append(dt)
        d["acc"].append(info[ACC])
        d["timeouts"] += "timeout" in (info.get("reason") or "")
    return per


def table(title, per):
    print(f"\n{title}")
    hdr = f"{'category':<18}{'n':>5}{'resp/s':>10}{'mean ms':>10}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>10}{'acc':>7}" \
          f"{'timeouts':>10}"
    print(hdr)
    print("-" * len(hdr))
    all_t, all_n = 0.0, 0
    for cat, d in per.items():
        ts = sorted(d["times"])
        tot = sum(ts)
        all_t += tot
        all_n += len(ts)
        p95 = ts[min(len(ts) - 1, int(0.95 * len(ts)))]
        print(f"{cat:<18}{len(ts):>5}{len(ts) / tot:>10.1f}{1000 * tot / len(ts):>10.2f}"
              f"{1000 * statistics.median(ts):>9.2f}{1000 * p95:>9.2f}{1000 * ts[-1]:>10.1f}"
              f"{statistics.mean(d['acc']):>7.2f}{d['timeouts']:>10}")
    print("-" * len(hdr))
    print(f"{'TOTAL':<18}{all_n:>5}{all_n / all_t:>10.1f}{1000 * all_t / all_n:>10.2f}")
    non_adv = [(k, d) for k, d in per.items() if k != "adversarial"]
    n2 = sum(len(d["times"]) for _, d in non_adv)
    t2 = sum(sum(d["times"]) for _, d in non_adv)
    print(f"{'TOTAL w/o advers.':<18}{n2:>5}{n2 / t2:>10.1f}{1000 * t2 / n2:>10.2f}")


def reward_loop_throughput(items, timeout_s: float) -> None:
    import tempfile

    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    import verl_difficulty.rewards.managers  # noqa: F401  (registers the managers)
    from verl import DataProto
    from verl.experimental.reward_loop import RewardLoopWorker

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([r for _, _, r, _, _ in items[:200] if isinstance(r, str)][:200], trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    d = tempfile.mkdtemp()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>").save_pretrained(d)
    by_manager: dict = {}
    for cat, manager, resp, gt, task in items:
        if cat in ("adversarial", "hostile_cheap"):
            continue
        by_manager.setdefault(manager, []).append((resp, gt, task))
    print("\nREAL REWARD LOOP (RewardLoopWorker.compute_score_batch, decode included, 2 grader processes)")
    print(f"{'manager':<18}{'n':>5}{'resp/s':>10}{'mean ms':>10}")
    for manager, rows in by_manager.items():
        cfg = OmegaConf.create({
            "actor_rollout_ref": {"model": {"path": d, "tokenizer_path": None}},
            "reward": {"custom_reward_function": {"path": None, "name": "compute_score"},
                       "reward_manager": {"source": "register", "name": manager, "module": {"path": None}},
                       "reward_model": {"enable": False}, "sandbox_fusion": {"url": None},
                       "reward_kwargs": {"timeout_s": timeout_s}}})
        worker = RewardLoopWorker(cfg, None)
        tk = worker.input_tokenizer
        resp_ids = [tk.encode(r, add_special_tokens=False) + [tk.eos_token_id] for r, _, _ in rows]
        rl = max(map(len, resp_ids))
        R = torch.full((len(rows), rl), tk.pad_token_id, dtype=torch.long)
        M = torch.zeros((len(rows), 4 + rl), dtype=torch.long)
        M[:, :4] = 1
        for i, ids in enumerate(resp_ids):
            R[i, : len(ids)] = torch.tensor(ids)
            M[i, 4: 4 + len(ids)] = 1
        data = DataProto.from_dict(
            tensors={"prompts": torch.ones(len(rows), 4, dtype=torch.long), "responses": R, "attention_mask": M},
            non_tensors={"data_source": np.array(["bench"] * len(rows), dtype=object),
                         "reward_model": np.array([{"ground_truth": g} for _, g, _ in rows], dtype=object),
                         "extra_info": np.array([{"task_type": t} for _, _, t in rows], dtype=object)})
        worker.loop.run_until_complete(worker.compute_score_batch(data[:2]))  # warm
        t = time.perf_counter()
        out = worker.loop.run_until_complete(worker.compute_score_batch(data))
        dt = time.perf_counter() - t
        assert len(out) == len(rows)
        print(f"{manager:<18}{len(rows):>5}{len(rows) / dt:>10.1f}{1000 * dt / len(rows):>10.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="items per regular category")
    ap.add_argument("--timeout", type=float, default=5.0, help="hard time limit per grading call (s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reward-loop", action="store_true", help="also measure through verl's RewardLoopWorker")
    args = ap.parse_args()

    items = make_items(args.n, args.seed)
    print(f"{len(items)} responses; time limit {args.timeout}s; 1 grader process fed sequentially")
    t = time.perf_counter()
    g = SafeGrader(timeout_s=args.timeout, num_procs=1)
    g.pool.ping()
    print(f"grader process start (imports + warm-up): {time.perf_counter() - t:.2f}s")

    # round trip of an empty request: the pure transport overhead
    n = 500
    t = time.perf_counter()
    for _ in range(n):
        g.pool.call("_ping", "", None)
    ping_ms = 1000 * (time.perf_counter() - t) / n

    per_pool = run(items, g)
    table("SUBPROCESS (time limit on)", per_pool)
    print(f"pool stats: {g.pool.stats}; empty round trip {ping_ms:.3f} ms")

    # the same items: caches are per process, and this process has graded nothing yet
    per_inline = run(items, SafeGrader(mode="inline"), skip_adversarial=True)
    table("INLINE (same process, no time limit, adversarial skipped)", per_inline)
    g.close()
    if args.reward_loop:
        reward_loop_throughput(items, args.timeout)


if __name__ == "__main__":
    main()

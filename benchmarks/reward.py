"""Reward grading throughput: responses graded per second per worker, on a mixed set, with the time limit on.

    python benchmarks/reward.py [--n 40] [--timeout 5] [--seed 0] [--ocr-lengths 1000,2000,4000,8000,10000]

One "worker" is one grader subprocess fed sequentially (what one reward-loop worker does when it grades one response
at a time; with ``num_procs`` processes it grades that many in parallel). Every response is distinct (random numbers),
so math-verify's parse caches do not flatter the numbers. Each response goes through the same code as the reward
managers after decoding (:func:`verl_difficulty.rewards.functions.score_response`: UTF-8/empty checks, format rule on
the full text, truncation to the last ``max_chars`` characters, grading in the subprocess with the hard time limit).
The same set is also graded inline (in this process, no subprocess, no time limit, adversarial items skipped) to show
the subprocess overhead.

The mixed set has long OCR answers (``ocr_long``: 6-8k characters of prose with 5% of the characters changed) and
answers identical to a hostile LaTeX ground truth (``identical_latex``: ``\\boxed{10^{10^{10^{10}}}}``, which
math-verify parses for ever; ``r1v_acc`` used to time out on it).

OCR BEFORE/AFTER (first table): the OCR similarity of answers of ``--ocr-lengths`` characters (identical, one
substitution, 5% of the characters changed, unrelated prose of the same length) with difflib's ``SequenceMatcher``
ratio, the definition before rapidfuzz (:func:`difflib_similarity`, kept in this script only for the comparison),
and with :func:`verl_difficulty.rewards.perception.ocr_similarity` (rapidfuzz Levenshtein, ANLS-style), measured side by
side in this run, plus the whole new ``grade_ocr`` call (extraction, identity short-circuit, similarity).

``--reward-loop`` also runs the non-adversarial items through verl's real ``RewardLoopWorker`` (one worker, its
manager's default 2 grader processes, all responses of a batch awaited concurrently as ``compute_score_batch`` does),
with a tiny byte-level BPE tokenizer built in code: responses per second per reward-loop worker, decoding included.
"""

from __future__ import annotations

import argparse
import difflib
import random
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verl_difficulty.rewards.config import resolve_settings  # noqa: E402
from verl_difficulty.rewards.functions import score_response  # noqa: E402
from verl_difficulty.rewards.perception import OCR_MAX_CHARS, grade_ocr, normalize_ocr, ocr_similarity  # noqa: E402
from verl_difficulty.rewards.pool import SafeGrader  # noqa: E402
from verl_difficulty.schema import ACC  # noqa: E402


HUGE = "10^{10^{10^{10}}}"
"""math-verify parses it for ever (sympy builds 10**(10**(10**10))), also against the identical ground truth."""
_WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
          "they you were her she there had one all we their been has more will would when who so no out if up about "
          "into them can only other its time new some could these two may first then do any like my now over such "
          "our man me even most made after also did many before must through back years where much your way well "
          "down should because each just those people how too little state good very make world still own see men "
          "work long get here between both life being under never day same another know while last might us great "
          "old year off come since against go came right used take three").split()


def prose(n: int, rng: random.Random) -> str:
    """``n`` characters of English-like text (common words, Zipf-like frequencies): the shape of a page of OCR."""
    out, total = [], 0
    while total < n:
        w = _WORDS[min(int(rng.paretovariate(0.8)) - 1, len(_WORDS) - 1) if rng.random() < 0.5
                   else rng.randrange(len(_WORDS))]
        w = w.capitalize() if rng.random() < 0.05 else w
        out.append(w + ("." if rng.random() < 0.06 else ""))
        total += len(out[-1]) + 1
    return " ".join(out)[:n]


def perturb(text: str, rate: float, rng: random.Random) -> str:
    """``text`` with about ``rate`` of its characters replaced by another letter."""
    return "".join(c if rng.random() >= rate else rng.choice("xyzqj") for c in text)


def difflib_similarity(pred: str, gt: str) -> float:
    """The OCR similarity BEFORE rapidfuzz, kept here only to compare: difflib's ``SequenceMatcher`` ratio (2 *
    matches / total length, matches from greedily chosen longest blocks) with the same normalisation and cut."""
    a, b = normalize_ocr(pred), normalize_ocr(gt)
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    a = a[: max(OCR_MAX_CHARS, 2 * len(b))]
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


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
        page = prose(rng.randint(6000, 8000), rng)
        items.append(("ocr_long", "perception", think.format("Read the page.") + f"<answer>{perturb(page, 0.05, rng)}"
                      "</answer>", page, "ocr"))
        manager = rng.choice(["r1v_acc", "math_acc_format"])  # math_acc_format needs the box
        answer = rng.choice([f"\\boxed{{{HUGE}}}"] + ([f"<answer>{HUGE}</answer>"] if manager == "r1v_acc" else []))
        items.append(("identical_latex", manager, think.format("Huge.") + answer,
                      rng.choice([HUGE, f"\\boxed{{{HUGE}}}", f"<answer>{HUGE}</answer>"]), ""))
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


def _timed(fn, repeat: int) -> tuple[float, object]:
    """(best wall time of ``repeat`` calls in seconds, the last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def ocr_before_after(lengths: list[int], seed: int) -> None:
    """OCR similarity before (difflib) and after (rapidfuzz), side by side on the same answers, in this process."""
    rng = random.Random(seed)
    print("\nOCR BEFORE/AFTER (same process, same answers; best of 3 for the new code, 1 run of difflib)")
    hdr = (f"{'chars':>6} {'answer':<12}{'difflib ms':>12}{'rapidfuzz ms':>14}{'grade_ocr ms':>14}{'speed-up':>10}"
           f"{'sim before':>12}{'sim after':>11}{'acc before':>12}{'acc after':>11}")
    print(hdr)
    print("-" * len(hdr))
    for n in lengths:
        gt = prose(n, rng)
        cases = {"identical": gt, "one_edit": gt[: n // 2] + "Q" + gt[n // 2 + 1:],
                 "5%_changed": perturb(gt, 0.05, rng), "unrelated": prose(n, rng)}
        for name, answer in cases.items():
            response = f"<think>w</think><answer>{answer}</answer>"
            t_old, s_old = _timed(lambda a=answer, g=gt: difflib_similarity(a, g), 1)
            t_new, s_new = _timed(lambda a=answer, g=gt: ocr_similarity(a, g), 3)
            t_grade, res = _timed(lambda r=response, g=gt: grade_ocr(r, g), 3)
            print(f"{n:>6} {name:<12}{1000 * t_old:>12.1f}{1000 * t_new:>14.3f}{1000 * t_grade:>14.3f}"
                  f"{t_old / max(t_grade, 1e-9):>9.0f}x{s_old:>12.4f}{s_new:>11.4f}"
                  f"{float(s_old >= 0.5):>12.0f}{res.acc:>11.0f}")


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
    ap.add_argument("--ocr-lengths", default="1000,2000,4000,8000,10000",
                    help="answer lengths of the OCR before/after table (comma-separated; empty: skip it)")
    args = ap.parse_args()

    if args.ocr_lengths:
        ocr_before_after([int(x) for x in args.ocr_lengths.split(",")], args.seed)
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

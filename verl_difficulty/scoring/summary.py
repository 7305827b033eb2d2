"""The summary of a scoring job (``summary.json`` and the lines printed at the end).

The engine's part: rows in / scored / bad, bad-row reasons, shards (resumed), workers, generations per scorer, wall
time. Each scorer's part comes from the scorer itself: :meth:`~verl_difficulty.scoring.scorer.Scorer.summarize` over
its own columns of ``scored.parquet`` and :meth:`~verl_difficulty.scoring.scorer.Scorer.summary_lines` to print it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Optional, Sequence

from verl_difficulty.data.rows import reason_kind
from verl_difficulty.schema import BAD_ROW_REASON, PROMPT_ID
from verl_difficulty.scoring.scorer import Scorer, stats_line
from verl_difficulty.scoring.shards import Shard
from verl_difficulty.scoring.store import OutputDir


EXAMPLES = 5
"""Row ids shown per bad-row kind."""


def build_summary(out: OutputDir, shards: list[Shard], scorers: Sequence[Scorer], workers: Optional[int],
                  resumed: int, wall_s: float, rows_run: int) -> dict:
    import pyarrow.parquet as pq

    done = out.manifest["done"]
    rows_in = sum(s.rows for s in shards)
    rows_out = sum(done[str(s.id)]["rows_out"] for s in shards)
    gens: Counter = Counter()
    for s in shards:
        gens.update(done[str(s.id)].get("generations", {}))
    reasons: Counter = Counter()
    examples: dict[str, list] = {}
    if os.path.exists(out.bad_rows):
        with open(out.bad_rows) as f:
            for line in f:
                if line.strip():
                    b = json.loads(line)
                    kind = b.get("kind") or reason_kind(b[BAD_ROW_REASON])
                    reasons[kind] += 1
                    ids = examples.setdefault(kind, [])
                    if len(ids) < EXAMPLES:
                        ids.append(b.get(PROMPT_ID) if b.get(PROMPT_ID) is not None else f"row {b.get('row')}")
    per_scorer: dict = {}
    names = [name for s in scorers for name, _ in s.fields()]
    table = pq.read_table(out.merged, columns=names) if names else None
    if table is not None and table.num_rows:
        for s in scorers:
            stats = s.summarize(table.select([name for name, _ in s.fields()]))
            if stats:
                per_scorer[s.name] = dict(stats)
    for name, n in gens.items():
        per_scorer.setdefault(name, {})["generations"] = int(n)
        # over the rows scored (their generations; a bad row's are counted in "generations" only); none scored: None
        per_scorer[name]["generations_per_row"] = round(n / rows_out, 3) if rows_out else None
    return {
        "output": out.merged, "bad_rows_file": out.bad_rows, "rows_in": rows_in, "rows_scored": rows_out,
        "rows_bad": rows_in - rows_out, "bad_reasons": dict(reasons.most_common()),
        "bad_examples": {k: examples[k] for k, _ in reasons.most_common()}, "shards": len(shards),
        "shards_resumed": resumed, "workers": workers, "generations": int(sum(gens.values())),
        "scorers": per_scorer, "wall_s_this_run": round(wall_s, 2), "rows_this_run": rows_run,
        "rows_per_s_this_run": round(rows_run / wall_s, 3) if wall_s > 0 else None,
        "fingerprint": out.manifest["fingerprint"], "created": out.manifest["created"],
    }


def format_summary(s: dict, scorers: Sequence[Scorer] = ()) -> str:
    """The printed summary; each scorer's lines come from its ``summary_lines`` (scorers not given: ``k=v`` lines)."""
    by_name = {sc.name: sc for sc in scorers}
    lines = [f"scored {s['rows_scored']}/{s['rows_in']} rows into {s['output']} "
             f"({s['shards']} shards, {s['shards_resumed']} resumed; {s['generations']} generations; "
             f"{s['wall_s_this_run']:.1f} s this run)"]
    if s["rows_bad"]:
        lines.append(f"  {s['rows_bad']} bad rows skipped (see {s['bad_rows_file']}):")
        for kind, n in s["bad_reasons"].items():
            ids = s.get("bad_examples", {}).get(kind, [])
            more = ", ..." if n > len(ids) else ""
            lines.append(f"    {n:>6}  {kind}" + (f"  (e.g. {', '.join(str(i) for i in ids)}{more})" if ids else ""))
    for name, st in s["scorers"].items():
        scorer = by_name.get(name)
        if scorer is not None:
            lines.extend("  " + line for line in scorer.summary_lines(st))
        else:
            lines.append("  " + stats_line(name, st))
    return "\n".join(lines)

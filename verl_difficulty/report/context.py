"""What a section sees: the loaded inputs, their score columns, the scorers' provenance and the selections' params.

A section never opens a file itself: it asks the context for the rows of the inputs that hold the columns it needs
(:meth:`ReportContext.frames`), for a scorer's parameters as recorded in the provenance (:meth:`scorer_params`), or for
a selection's parameters (:meth:`selection_params`).
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from verl_difficulty.report.inputs import SCORED, SCORING, SELECTION, ReportInput
from verl_difficulty.schema import SCORE_PROVENANCE


class ReportContext:
    def __init__(self, inputs: Sequence[ReportInput]):
        self.inputs = list(inputs)
        self.scored = [i for i in self.inputs if i.kind in (SCORED, SCORING)]
        self.selections = [i for i in self.inputs if i.kind == SELECTION]
        self._provenance: Optional[list] = None

    def sources(self, source: str) -> list[ReportInput]:
        """The inputs a section of ``source`` reads: ``scores`` (scored tables), ``selection`` (decisions), ``any``."""
        return {"scores": self.scored, "selection": self.selections}.get(source, self.inputs)

    def frames(self, columns: Sequence[str], source: str = "scores") -> list[tuple[str, Any]]:
        """``(label, DataFrame of columns)`` for every input of ``source`` that has all ``columns``."""
        return [(i.label, i.read(list(columns))) for i in self.sources(source) if i.has(columns)]

    def provenance(self) -> list[tuple[str, str, dict]]:
        """``(input label, scorer, entry)`` for every distinct provenance entry of the scored inputs."""
        if self._provenance is None:
            out, seen = [], set()
            for inp in self.scored:
                if SCORE_PROVENANCE not in inp.columns:
                    continue
                for raw in inp.unique_strings(SCORE_PROVENANCE):
                    try:
                        data = json.loads(raw)
                    except ValueError:
                        continue
                    for name, entry in (data.items() if isinstance(data, dict) else ()):
                        if not isinstance(entry, dict):
                            continue
                        key = (inp.label, name, json.dumps(entry, sort_keys=True, default=str))
                        if key not in seen:
                            seen.add(key)
                            out.append((inp.label, name, entry))
            self._provenance = out
        return self._provenance

    def scorer_params(self, scorer: str) -> dict:
        """The parameters of ``scorer`` in the first provenance entry that has them (``{}`` if none)."""
        for _, name, entry in self.provenance():
            if name == scorer and isinstance(entry.get("params"), dict):
                return entry["params"]
        return {}

    def selection_params(self, method: str) -> Optional[dict]:
        """The ``params`` of the first selection made with ``method`` (``p1``, ``p2``, ``p4``); None if none is."""
        for sel in self.selections:
            if str(sel.selection.get("method", "")).lower() == method:
                params = sel.selection.get("params")
                return params if isinstance(params, dict) else {}
        return None


def pick_number(params: Optional[dict], keys: Sequence[str], default: float) -> float:
    """The first of ``keys`` in ``params`` that holds a number, else ``default``."""
    for k in keys:
        v = (params or {}).get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return float(default)

"""Shared fixtures of the scoring tests."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_difficulty.schema import EXTRA_INFO, SCORE_PROVENANCE


def _scored_bytes(path) -> bytes:
    """A scored parquet's rows and columns except the provenance (its date differs between jobs), as Arrow IPC bytes
    of one record batch (independent of row groups): two runs that scored the same values give equal bytes."""
    table = pq.read_table(path)
    if SCORE_PROVENANCE in table.column_names:
        table = table.drop_columns([SCORE_PROVENANCE])
    table = table.combine_chunks().replace_schema_metadata(None)
    ei = table.column(EXTRA_INFO).combine_chunks()
    keep = [i for i in range(ei.type.num_fields) if ei.type.field(i).name != SCORE_PROVENANCE]
    ei = pa.StructArray.from_arrays([ei.field(i) for i in keep], fields=[ei.type.field(i) for i in keep])
    table = table.set_column(table.column_names.index(EXTRA_INFO), EXTRA_INFO, ei)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


@pytest.fixture(scope="session")
def scored_bytes():
    """``scored_bytes(path)``: the comparable content of a ``scored.parquet`` (see :func:`_scored_bytes`)."""
    return _scored_bytes

"""Oracle difficulty buckets for the synthetic data: ``difficulty_bucket`` from the generator's known level.

The offline scorers write real buckets (PISM, CMAB) later; until then, and for tests and the demo, this writes
``extra_info.difficulty_bucket`` (``schema.DIFFICULTY_BUCKET``) of a synthetic verl parquet from its known
``true_difficulty`` level: 0 -> easy, 1 -> medium, 2 -> hard, 3 -> unsolved (``schema.BUCKETS`` order), so the
sampler's bucket modes can run on it.
"""

from __future__ import annotations

import numpy as np

from verl_difficulty import schema


def add_true_buckets(path: str, field: str = schema.DIFFICULTY_BUCKET) -> bool:
    """Add ``extra_info[field]`` from ``extra_info.true_difficulty`` to the parquet at ``path`` in place.

    Returns False (and leaves the file alone) when the field is already there. Levels beyond the bucket list map
    to the last bucket.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from verl_difficulty.data.io import set_struct_fields, write_parquet

    table = pq.read_table(path)
    ei = table.column(schema.EXTRA_INFO).combine_chunks()
    if ei.type.get_field_index(field) >= 0:
        return False
    if ei.type.get_field_index(schema.TRUE_LEVEL) < 0:
        raise ValueError(f"{path}: no {schema.EXTRA_INFO}.{schema.TRUE_LEVEL} (not a synthetic dataset)")
    level = pc.struct_field(ei, schema.TRUE_LEVEL).to_numpy(zero_copy_only=False).astype(np.int64)
    names = np.array(schema.BUCKETS)[np.clip(level, 0, len(schema.BUCKETS) - 1)]
    struct = set_struct_fields(ei, {field: pa.array(names)})
    table = table.set_column(table.schema.get_field_index(schema.EXTRA_INFO), schema.EXTRA_INFO, struct)
    write_parquet(path, table)
    return True

"""The feed's batches on plain Arrow tables, in milliseconds: grouped by the slice columns (a
missing value a group of its own), every row exactly once, no batch larger than asked."""
from __future__ import annotations

import pyarrow as pa

from components.evaluate.tfma_inputs import batches

TABLE = pa.table({
    "island": ["Dream", "Biscoe", None, "Dream", "Biscoe", "Dream", None, "Dream", "Torgersen", "Dream"],
    "year": [2007, 2008, 2007, 2007, 2008, 2009, 2007, 2007, 2009, 2009],
    "row": list(range(10)),
})


def test_batches_share_their_slice_values_and_hold_every_row_once():
    found = list(batches(TABLE, ("island", "year"), batch_rows=2))
    assert all(1 <= batch.num_rows <= 2 for batch in found)
    assert all(batch.column(0).num_chunks == 1 for batch in found)
    for batch in found:
        assert len({(island, year) for island, year in zip(batch.column("island").to_pylist(),
                                                           batch.column("year").to_pylist())}) == 1
    assert sorted(row for batch in found for row in batch.column("row").to_pylist()) == list(range(10))
    groups = {(batch.column("island")[0].as_py(), batch.column("year")[0].as_py()) for batch in found}
    assert groups == {("Dream", 2007), ("Dream", 2009), ("Biscoe", 2008), (None, 2007), ("Torgersen", 2009)}
    # Dream 2007 has three rows: two batches.
    assert sum(1 for batch in found if batch.column("island")[0].as_py() == "Dream"
               and batch.column("year")[0].as_py() == 2007) == 2


def test_without_slice_columns_the_rows_keep_their_order():
    found = list(batches(TABLE, (), batch_rows=4))
    assert [batch.num_rows for batch in found] == [4, 4, 2]
    assert [row for batch in found for row in batch.column("row").to_pylist()] == list(range(10))


def test_an_empty_table_has_no_batch():
    assert list(batches(TABLE.slice(0, 0), ("island",), batch_rows=4)) == []

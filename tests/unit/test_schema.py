"""The row contract: statuses and a per-row error that survives a trip through a worker process."""

import pickle

from clip_index.schema import STATUSES, RowError, Status


def test_row_error_pickles_with_its_status() -> None:
    err = pickle.loads(pickle.dumps(RowError(Status.FAILED_TO_DECODE, "decode_error: bad")))
    assert err.status is Status.FAILED_TO_DECODE and str(err) == "decode_error: bad"


def test_statuses_cover_the_design_contract() -> None:
    assert {"success", "failed_to_download", "failed_to_decode", "filtered", "opted_out",
            "blocked"} <= set(STATUSES)

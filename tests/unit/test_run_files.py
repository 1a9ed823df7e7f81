"""A run's files after a crash or a full disk: what is read back, and what a failed write says."""

import errno

import pytest

from hatchery.core.run_files import RunFilesError, writing
from hatchery.core.run_metrics import GenerationStats, MetricsLog, metrics_rows
from hatchery.core.update_log import UpdateLog, UpdateRecord


def _row(generation: int) -> str:
    return GenerationStats(generation, 0.5, 1.0, 0.1, None, 2.0, 10, 0.3, 0.5).to_json() + "\n"


def test_a_torn_last_metrics_row_is_left_out_and_a_corrupt_one_refused(tmp_path):
    """Issue 24, finding 3: a full disk while appending metrics.jsonl left a torn last line, and
    resume crashed with JSONDecodeError. Fails before the fix."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(_row(0) + _row(1) + '{"generation": 2, "rew')
    assert [r["generation"] for r in metrics_rows(path)] == [0, 1]
    log = MetricsLog(path, logged=2)  # what a resumed optimizer does
    log.close()
    assert [s.generation for s in log.history] == [0, 1] and path.read_text() == _row(0) + _row(1)
    path.write_text(_row(0) + "{not json\n" + _row(2))
    with pytest.raises(ValueError, match="metrics.jsonl:2: not a metrics row"):
        metrics_rows(path)


def test_the_newest_update_record_can_be_dropped(tmp_path):
    log = UpdateLog(tmp_path / "updates.jsonl")
    for g in range(3):
        log.append(UpdateRecord(g, g, 0.1, 0.01, (1.0, -1.0)))
    log.drop_last()
    log.close()
    assert [r.generation for r in UpdateLog(tmp_path / "updates.jsonl").records] == [0, 1]


def test_a_failed_write_names_its_file(tmp_path):
    with pytest.raises(RunFilesError, match=f"cannot write {tmp_path / 'x'}: No space left on device"):
        with writing(tmp_path / "x"):
            raise OSError(errno.ENOSPC, "No space left on device")

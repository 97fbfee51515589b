import gc

from consumer.app import YOUNG_GENERATION_THRESHOLD, collecting_garbage_less


def test_the_loop_runs_with_what_exists_frozen_and_fewer_young_collections_then_all_is_undone(
) -> None:
    before = gc.get_threshold()
    with collecting_garbage_less():
        assert gc.get_freeze_count() > 0  # the modules and settings loaded at start
        assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0

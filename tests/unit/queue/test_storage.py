"""Result files (``serve_app.queue.storage``): safe names, atomic writes, and faults named in words."""

import pytest

from serve_app.queue.storage import ResultStore, result_name


def test_result_names_and_store(tmp_path):
    name = result_name("qwen-4step", 1705314685, 42, "a1b2c3d4-4a5d-4e8f-9c2a-1b3d4e5f6a7b")
    assert name == "qwen-4step_20240115_103125_s42_a1b2c3d4.png"
    store = ResultStore(tmp_path / "results")
    store.write(name, b"png")
    assert store.read(name) == b"png" and store.names() == [name]
    store.delete(name)
    assert store.names() == []
    for bad in ["../x.png", "/etc/passwd", "a/../../b.png"]:
        with pytest.raises(ValueError):
            store.read(bad)


def test_storage_faults_are_named_in_words_an_operator_acts_on(tmp_path):
    import errno

    from serve_app.queue.storage import ResultStore, storage_reason

    assert storage_reason(OSError(errno.ENOSPC, "No space left on device")) == \
        "the disk holding the results folder is full"
    assert storage_reason(OSError(errno.EROFS, "Read-only file system")) == "the results folder is not writable"
    assert storage_reason(FileNotFoundError(errno.ENOENT, "x")) == "the results folder is missing"
    store = ResultStore(tmp_path / "results")
    assert store.problem(0) is None
    assert "MB free, less than min_free_disk_mb (1048576): jobs fail" in store.problem(2**40)  # 1 TiB: more than free
    (tmp_path / "results").rmdir()
    assert store.problem(0) == "The results folder is missing: results cannot be stored until it is back."

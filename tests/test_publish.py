"""probe.publish: a staged output appears whole on success and leaves nothing behind otherwise."""

from __future__ import annotations

import errno
import os

import pytest

from probe.publish import PublishError, fsync_tree, publish, staged


def test_a_staged_folder_is_published_named_like_its_destination(tmp_path):
    dest = tmp_path / "deep" / "model"
    with staged(dest, is_dir=True, durable=True) as stage:
        assert stage.name == "model" and stage.is_dir() and not dest.exists()
        (stage / "weights.bin").write_bytes(b"1234")
    assert (dest / "weights.bin").read_bytes() == b"1234"
    assert os.listdir(dest.parent) == ["model"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failure_inside_leaves_nothing(tmp_path, error):
    with pytest.raises(error):
        with staged(tmp_path / "model", is_dir=True) as stage:
            (stage / "half").write_bytes(b"12")
            raise error()
    with pytest.raises(error):
        with staged(tmp_path / "page.html", is_dir=False) as stage:
            stage.write_text("<html>")
            raise error()
    assert os.listdir(tmp_path) == []


def test_a_folder_never_replaces_a_filled_one_but_takes_an_empty_one(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "theirs").write_text("keep")
    with pytest.raises(PublishError) as caught:
        with staged(tmp_path / "taken", is_dir=True) as stage:
            (stage / "mine").write_text("new")
    assert caught.value.errno in (errno.ENOTEMPTY, errno.EEXIST) and caught.value.strerror
    assert os.listdir(tmp_path / "taken") == ["theirs"] and sorted(os.listdir(tmp_path)) == ["taken"]
    (tmp_path / "empty").mkdir()
    with staged(tmp_path / "empty", is_dir=True) as stage:
        (stage / "mine").write_text("new")
    assert os.listdir(tmp_path / "empty") == ["mine"]


def test_a_file_replaces_the_old_one_and_keeps_its_suffix_while_staged(tmp_path):
    dest = tmp_path / "figure.png"
    dest.write_text("old")
    with staged(dest, is_dir=False, durable=True) as stage:
        assert stage.parent == tmp_path and stage.suffix == ".png" and stage.name.startswith(".figure.")
        stage.write_text("new")
    assert dest.read_text() == "new" and os.listdir(tmp_path) == ["figure.png"]


def test_a_stage_can_live_in_a_temp_area_that_comes_and_goes(tmp_path):
    area, dest = tmp_path / ".tmp", tmp_path / "trace"
    with staged(dest, is_dir=True, stage_in=area) as stage:
        assert stage.parent.parent == area
        (stage / "manifest.json").write_text("{}")
    assert (dest / "manifest.json").exists() and os.listdir(area) == []


def test_publish_reports_the_reason_and_leaves_the_stage(tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "x").write_text("x")
    fsync_tree(stage)
    with pytest.raises(PublishError, match="No such file or directory"):
        publish(stage, tmp_path / "missing" / "dest")
    assert (stage / "x").exists()

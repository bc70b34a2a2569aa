"""Capture: URIs, file/synthetic sources, the latest-frame mailbox and reopen logic.

There is no camera on the build machines, so the V4L2 source's format handling is
tested with a fake `cv2.VideoCapture` (the test names say so).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.capture import (CaptureThread, EndOfStream, Frame, Mailbox, MailboxClosed, SourceError,
                           SourceUriError, open_source, parse_uri)
from edged.capture.v4l2 import V4l2Source


def frame(seq: int) -> Frame:
    return Frame(seq=seq, captured_at=time.time(), t_capture=time.monotonic(),
                 image=np.zeros((2, 2, 3), np.uint8))


def write_video(path: Path, frames: int = 6, fps: float = 25.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * 20, np.uint8))
    writer.release()
    return path


# ------------------------------------------------------------------ mailbox
def test_mailbox_replaces_unconsumed_frame_and_counts_the_drop():
    box = Mailbox()
    for i in range(5):
        box.put(frame(i))
    got = box.get(timeout=0)
    assert got.seq == 4 and box.dropped == 4 and box.delivered == 1
    assert box.get(timeout=0) is None


def test_mailbox_blocking_put_waits_for_the_consumer_and_loses_nothing():
    box = Mailbox()
    box.put(frame(0), block=True)
    done = threading.Event()

    def produce():
        box.put(frame(1), block=True)
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    assert not done.wait(0.05)  # still blocked: slot is full
    assert box.get(timeout=1).seq == 0
    assert done.wait(2) and box.get(timeout=1).seq == 1 and box.dropped == 0


def test_mailbox_on_demand_producer_waits_until_someone_asks():
    box = Mailbox()
    asked = threading.Event()

    def produce():
        box.wait_wanted()
        asked.set()
        box.put(frame(7), block=True)

    threading.Thread(target=produce, daemon=True).start()
    assert not asked.wait(0.05)
    assert box.get(timeout=2).seq == 7 and asked.is_set()


def test_mailbox_close_wakes_producers_and_consumers():
    box = Mailbox()
    box.close()
    with pytest.raises(MailboxClosed):
        box.put(frame(0))
    with pytest.raises(MailboxClosed):
        box.wait_wanted()
    assert box.get(timeout=None) is None


# ------------------------------------------------------------------ URIs and sources
@pytest.mark.parametrize("uri, message", [
    ("rtsp://cam", "must start with"), ("file:", "missing path"),
    ("file:/x.mp4?speed=2", "unknown parameter"), ("synthetic:big", "WIDTHxHEIGHT"),
    ("v4l2:/dev/video0?fps=fast", "bad parameter value")])
def test_bad_source_uri_is_a_user_error(uri, message):
    with pytest.raises(SourceUriError, match=message):
        open_source(uri)


def test_parse_uri_splits_path_and_parameters():
    assert parse_uri("v4l2:/dev/video0?fourcc=MJPG&width=1280") == (
        "v4l2", "/dev/video0", {"fourcc": "MJPG", "width": "1280"})


def test_file_source_without_loop_ends_after_the_last_frame(tmp_path):
    src = open_source(f"file:{write_video(tmp_path / 'v.mp4', 6)}?loop=0&rate=max")
    src.open()
    stop = threading.Event()
    frames = [src.read(stop) for _ in range(6)]
    assert [f.pos for f in frames] == list(range(6)) and frames[0].image.shape == (48, 64, 3)
    with pytest.raises(EndOfStream):
        src.read(stop)
    assert not src.live


def test_file_source_loops_by_default(tmp_path):
    src = open_source(f"file:{write_video(tmp_path / 'v.mp4', 3)}?rate=max")
    src.open()
    assert [src.read(threading.Event()).pos for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_image_folder_source_reads_sorted_images(tmp_path):
    for name, value in (("b.png", 20), ("a.png", 10)):
        cv2.imwrite(str(tmp_path / name), np.full((8, 8, 3), value, np.uint8))
    src = open_source(f"file:{tmp_path}?loop=0&rate=max")
    src.open()
    assert [int(src.read(threading.Event()).image[0, 0, 0]) for _ in range(2)] == [10, 20]


def test_missing_file_fails_to_open(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        open_source(f"file:{tmp_path / 'nope.mp4'}").open()


def test_synthetic_mjpg_source_decodes_each_frame_on_arrival():
    src = open_source("synthetic:320x240@0?mjpg=1")
    src.open()
    raw = src.read(threading.Event())
    assert raw.image.shape == (240, 320, 3) and raw.decode_ms > 0 and not src.live


def test_paced_synthetic_source_is_live_and_keeps_its_rate():
    src = open_source("synthetic:64x48@50")
    src.open()
    stop = threading.Event()
    start = time.monotonic()
    for _ in range(11):
        src.read(stop)
    assert src.live and 0.18 <= time.monotonic() - start < 0.6


# ------------------------------------------------------------------ V4L2 (fake capture)
class FakeCapture:
    """Stands in for cv2.VideoCapture: records set() calls, returns given frames."""

    def __init__(self, frames, width=1280, height=720, opened=True):
        self.frames, self.props, self.opened = list(frames), {}, opened
        self.props[cv2.CAP_PROP_FRAME_WIDTH], self.props[cv2.CAP_PROP_FRAME_HEIGHT] = width, height

    def __call__(self, path, api):
        self.api = api
        return self

    def isOpened(self):
        return self.opened

    def set(self, prop, value):
        self.props[prop] = value
        return True

    def get(self, prop):
        return self.props.get(prop, 0)

    def read(self):
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def release(self):
        pass


def v4l2_with(fake, fourcc="MJPG", tmp_path=None):
    device = tmp_path / "video0"
    device.touch()
    src = V4l2Source(f"v4l2:{device}", str(device), fourcc=fourcc, width=1280, height=720,
                     fps=30, capture_factory=fake)
    src.open()
    return src


def test_v4l2_requests_fourcc_size_fps_and_one_buffer_with_fake_capture(tmp_path):
    fake = FakeCapture([np.zeros((720, 1280, 3), np.uint8)])
    src = v4l2_with(fake, tmp_path=tmp_path)
    assert fake.api == cv2.CAP_V4L2
    assert fake.props[cv2.CAP_PROP_FOURCC] == cv2.VideoWriter_fourcc(*"MJPG")
    assert fake.props[cv2.CAP_PROP_BUFFERSIZE] == 1 and fake.props[cv2.CAP_PROP_FPS] == 30
    assert src.read(threading.Event()).image.shape == (720, 1280, 3)


def test_v4l2_flat_bgr3_buffer_is_reshaped_with_fake_capture(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    src = v4l2_with(FakeCapture([image.reshape(1, -1)]), tmp_path=tmp_path)
    np.testing.assert_array_equal(src.read(threading.Event()).image, image)


def test_v4l2_flat_buffer_rejected_with_fake_capture(tmp_path):
    src = v4l2_with(FakeCapture([np.zeros((1, 12345), np.uint8)]), tmp_path=tmp_path)
    with pytest.raises(SourceError, match="fourcc=MJPG or fourcc=YUYV"):
        src.read(threading.Event())


def test_v4l2_grey_frames_become_bgr_with_fake_capture(tmp_path):
    src = v4l2_with(FakeCapture([np.zeros((720, 1280), np.uint8)]), tmp_path=tmp_path)
    assert src.read(threading.Event()).image.shape == (720, 1280, 3)


def test_v4l2_missing_device_fails_to_open():
    with pytest.raises(SourceError, match="no such device"):
        open_source("v4l2:/dev/video-does-not-exist").open()


# ------------------------------------------------------------------ capture thread
def test_capture_thread_reopens_a_removed_file_when_it_returns(tmp_path):
    video = write_video(tmp_path / "v.mp4", 4)
    spare = tmp_path / "spare.mp4"
    shutil.copy(video, spare)
    capture = CaptureThread(open_source(f"file:{video}?rate=max"), Mailbox(), stall_timeout_s=5,
                            backoff_initial_s=0.01, backoff_max_s=0.05)
    video.unlink()  # gone before the first open
    capture.start()
    try:
        assert capture.wait_for_state(online=False, timeout=5)
        assert "not found" in capture.state()[1]
        shutil.copy(spare, video)
        capture.mailbox.get(timeout=5)  # on-demand source: ask for a frame
        assert capture.wait_for_state(online=True, timeout=5) and capture.reopens >= 1
    finally:
        capture.stop()


def _folder_with_corrupt_images(folder: Path, good: int, corrupt_at: set) -> Path:
    folder.mkdir()
    for i in range(good + len(corrupt_at)):
        if i in corrupt_at:
            (folder / f"{i:03d}.jpg").write_bytes(b"\xff\xd8 not really a jpeg" if i % 2 else b"")
        else:
            cv2.imwrite(str(folder / f"{i:03d}.jpg"), np.full((8, 8, 3), 10 * i, np.uint8))
    return folder


def _drain(capture: CaptureThread) -> list:
    got = []
    while (frame := capture.mailbox.get(timeout=5)) is not None:
        got.append(frame)
    return got


def test_corrupt_frames_are_skipped_and_counted_without_reopening(tmp_path):
    folder = _folder_with_corrupt_images(tmp_path / "imgs", good=8, corrupt_at={2, 5, 6})
    capture = CaptureThread(open_source(f"file:{folder}?loop=0&rate=max"), Mailbox(), stall_timeout_s=5,
                            backoff_initial_s=0.01, backoff_max_s=0.05)
    capture.start()
    try:
        frames = _drain(capture)
        assert [int(f.image[0, 0, 0]) for f in frames] == [0, 10, 30, 40, 70, 80, 90, 100]
        assert capture.corrupt == 3 and capture.reopens == 0 and capture.state() == (True, None)
    finally:
        capture.stop()


def test_a_long_run_of_corrupt_frames_is_reported_until_a_good_frame_arrives(tmp_path):
    folder = _folder_with_corrupt_images(tmp_path / "imgs", good=2, corrupt_at=set(range(1, 31)))
    # backoff 0.3 s after each corrupt frame past the 25th: the offline window lasts ~1.5 s
    capture = CaptureThread(open_source(f"file:{folder}?loop=0&rate=max"), Mailbox(), stall_timeout_s=5,
                            backoff_initial_s=0.3, backoff_max_s=0.3)
    frames: list = []
    consumer = threading.Thread(target=lambda: frames.extend(_drain(capture)))
    capture.start()
    consumer.start()
    try:
        assert capture.wait_for_state(online=False, timeout=10)
        assert "corrupt frames in a row" in capture.state()[1]
        consumer.join(10)
        assert len(frames) == 2 and capture.corrupt == 30 and capture.reopens == 0
        assert capture.state() == (True, None)  # the good frame after the run cleared it
    finally:
        capture.stop()


def test_capture_thread_reports_a_stalled_read():
    class Stalling:
        live, uri = True, "fake:stall"
        release = threading.Event()

        def open(self):
            pass

        def read(self, stop):
            self.release.wait(5)
            raise SourceError("stalled")

        def close(self):
            pass

    source = Stalling()
    capture = CaptureThread(source, Mailbox(), stall_timeout_s=0.05, backoff_initial_s=0.01)
    capture.start()
    try:
        deadline = time.monotonic() + 5
        while capture.state()[0] and time.monotonic() < deadline:
            time.sleep(0.01)  # the stall is a duration, there is no event to wait on
        online, reason = capture.state()
        assert not online and "no frame for" in reason
    finally:
        source.release.set()
        capture.stop()


@given(st.lists(st.sampled_from(["put", "get"]), max_size=60))
def test_mailbox_accounts_for_every_frame(ops):
    """Whatever the interleaving: delivered + dropped + still waiting == offered, and
    every delivered frame is newer than the one before."""
    box, offered, seen = Mailbox(), 0, []
    for op in ops:
        if op == "put":
            box.put(frame(offered))
            offered += 1
        else:
            got = box.get(timeout=0)
            if got is not None:
                seen.append(got.seq)
    waiting = 1 if box.get(timeout=0) is not None else 0
    assert len(seen) + box.dropped + waiting == offered
    assert seen == sorted(seen)

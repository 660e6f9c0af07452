"""Decoding work a client can ask of `mtad serve`: one full-size decode at a time per
client address, a pixel budget per request (issue 22). No server: the gate and the
budget are tested directly; the server test of the same path is in test_serve.py."""
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from mtad.serve.uploads import DecodeGate, Limits, UploadError, charge_request_pixels, header_pixels


def _png(w, h):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_header_pixels_reads_the_size_without_decoding_and_is_zero_for_non_images():
    assert header_pixels(_png(30, 20)) == 600
    assert header_pixels(b"not an image") == 0


def test_the_request_budget_refuses_the_file_that_passes_it_and_names_it():
    limits = Limits(max_request_pixels=1000)
    spent = charge_request_pixels(_png(20, 20), "a.png", 0, limits)        # 400
    spent = charge_request_pixels(_png(20, 30), "b.png", spent, limits)    # 1000: at the limit
    assert spent == 1000
    with pytest.raises(UploadError) as err:
        charge_request_pixels(_png(1, 1), "c.png", spent, limits)
    assert err.value.status == 413 and "c.png" in err.value.message
    assert "1,000-pixel decode budget" in err.value.message
    with pytest.raises(ValueError, match="max_request_pixels"):
        Limits(max_request_pixels=0)


def test_a_client_decodes_one_photo_at_a_time_and_others_keep_a_slot():
    gate = DecodeGate(slots=2, per_client=1)
    inside, order, lock = {}, [], threading.Lock()
    release = threading.Event()

    def decode(host, tag):
        with gate.slot(host):
            with lock:
                inside[host] = inside.get(host, 0) + 1
                order.append((tag, dict(inside)))
            release.wait(5)           # bounded: the test sets it
            with lock:
                inside[host] -= 1

    greedy = [threading.Thread(target=decode, args=("10.0.0.1", f"g{i}")) for i in range(4)]
    for t in greedy:
        t.start()
    deadline = time.monotonic() + 5
    while len(order) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    other = threading.Thread(target=decode, args=("10.0.0.2", "o"))
    other.start()
    while len(order) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    # the greedy client holds one slot however many photos it sends; the other gets in
    assert order[0][0].startswith("g") and order[1][0] == "o", order
    assert max(seen.get("10.0.0.1", 0) for _, seen in order) == 1
    release.set()
    for t in [*greedy, other]:
        t.join(5)
    assert len(order) == 5 and gate.waiting_clients() == 0
    assert all(seen.get("10.0.0.1", 0) <= 1 for _, seen in order)

"""A tracker that stops answering but keeps its connections open (SIGSTOP: a wedged process,
or a host gone without a RST). A client notices with ``ping`` and ``abort`` fails its pending
jobs with ConnectionLost, which the campaign driver resubmits after re-dialling."""
from __future__ import annotations

import os
import signal

import pytest

from rpc.errors import ConnectionLost
from tests.rpc.fake_backend import fake_artifact
from tests.rpc.harness import LocalFarm


def test_ping_times_out_and_abort_fails_pending_jobs(local_farm: LocalFarm) -> None:
    client = local_farm.client()
    client.ping(5)  # a live tracker answers
    art = fake_artifact("ok", tag="stopped")
    job = client.result_future(client.submit(art.header(), art.code, "nobody-serves-this", {}))
    assert local_farm.tracker is not None
    os.kill(local_farm.tracker.pid, signal.SIGSTOP)
    try:
        with pytest.raises(TimeoutError):
            client.ping(0.5)
        assert not job.done()
        client.abort()
        with pytest.raises(ConnectionLost):
            job.result(5)
    finally:
        os.kill(local_farm.tracker.pid, signal.SIGCONT)

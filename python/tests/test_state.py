"""State sharing: an overridden get_current_state served to a downloader; group bits."""

import threading
import time

import numpy as np
import pytest
import torch

import averager
from conftest import RESULT_TIMEOUT


class Trainer(averager.DecentralizedAverager):
    """Serves its own metadata and extra tensors, as a training loop would (epoch, optimizer)."""

    def __init__(self, *args, **kwargs):
        self.calls = 0
        self.lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def get_current_state(self):
        with self.lock:
            self.calls += 1
        with self.get_tensors() as tensors:
            params = [t.clone() for t in tensors]
        extra = torch.arange(6, dtype=torch.float64).reshape(2, 3)
        return dict(epoch=7, lr=0.1, note="hi"), params + [extra], []


def load_until_found(peer, limit=RESULT_TIMEOUT):
    """Donor records reach the DHT asynchronously: retry until one is found (bounded)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        state = peer.load_state_from_peers(timeout=30)
        if state is not None:
            return state
        time.sleep(0.05)  # poll interval while the donor's record propagates, not a synchronisation
    raise AssertionError("no state downloaded")


def test_load_state_from_an_overridden_get_current_state(group):
    donor_tensors = [torch.full((4,), 5.0), torch.ones(2, 2, dtype=torch.bfloat16)]
    newcomer_tensors = [torch.zeros(4), torch.zeros(2, 2, dtype=torch.bfloat16)]
    donor, newcomer = group(
        [donor_tensors, newcomer_tensors],
        per_peer=[dict(cls=Trainer, allow_state_sharing=True), dict(allow_state_sharing=False)],
    )
    assert donor.allow_state_sharing and not newcomer.allow_state_sharing
    metadata, tensors = load_until_found(newcomer)
    assert metadata == dict(epoch=7, lr=0.1, note="hi")
    assert donor.calls >= 1
    assert len(tensors) == 3 and all(isinstance(t, torch.Tensor) for t in tensors)
    torch.testing.assert_close(tensors[0], torch.full((4,), 5.0))
    assert tensors[1].dtype == torch.bfloat16
    torch.testing.assert_close(tensors[2], torch.arange(6, dtype=torch.float64).reshape(2, 3))


def test_default_state_is_group_key_and_tensors_and_numpy_comes_back_as_numpy(group):
    donor, newcomer = group(
        [[np.full(3, 2.0, dtype=np.float32)], [np.zeros(3, dtype=np.float32)]],
        per_peer=[dict(initial_group_bits="01"), dict(allow_state_sharing=False, initial_group_bits="01")],
    )
    donor.state_sharing_priority = 5.0
    assert donor.state_sharing_priority == 5.0
    metadata, tensors = load_until_found(newcomer)
    assert metadata == {"group_key": "01"}
    assert isinstance(tensors[0], np.ndarray)
    np.testing.assert_array_equal(tensors[0], np.full(3, 2.0))
    future = newcomer.load_state_from_peers(wait=False, timeout=30)
    assert future.result(timeout=RESULT_TIMEOUT) is None or future.result()[0] == {"group_key": "01"}


def test_no_donor_gives_none(group):
    (alone,) = group([[np.zeros(1, dtype=np.float32)]], allow_state_sharing=False)
    assert alone.load_state_from_peers(timeout=5) is None
    alone.allow_state_sharing = True
    assert alone.allow_state_sharing


def test_group_bits(group):
    (peer,) = group([[np.zeros(1, dtype=np.float32)]], initial_group_bits="101")
    assert peer.get_group_bits() == "101"
    peer.set_group_bits("0011")
    assert peer.get_group_bits() == "0011"
    assert peer.get_group_bits(wait=False).result(timeout=RESULT_TIMEOUT) == "0011"
    with pytest.raises(ValueError):
        peer.set_group_bits("012")
    assert peer.get_group_bits() == "0011"


def test_client_cannot_share_state(group):
    (client,) = group([[np.zeros(1, dtype=np.float32)]], client_mode=True)
    assert not client.allow_state_sharing
    with pytest.raises(ValueError):
        client.allow_state_sharing = True

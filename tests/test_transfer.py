"""probe.transfer: device→host copies; on a CPU the tensor itself, on CUDA pinned and non-blocking."""

import numpy as np
import pytest
import torch

from probe.store import Store, WriteQueue
from probe.transfer import HostCopy, to_device, to_host


def test_cpu_tensor_is_handed_back_without_a_copy():
    tensor = torch.arange(6.0).reshape(2, 3)
    copy = to_host(tensor)
    assert isinstance(copy, HostCopy) and copy.shape == (2, 3) and copy.dtype == torch.float32
    host = copy.wait()
    assert host.data_ptr() == tensor.data_ptr() and torch.equal(host, tensor)  # no copy on a CPU
    assert copy.wait().data_ptr() == tensor.data_ptr()  # waiting twice is fine


def test_to_device_on_a_cpu():
    ids = to_device([50258, 3, 7], torch.device("cpu"))
    assert ids.dtype == torch.long and ids.device.type == "cpu" and ids.tolist() == [50258, 3, 7]
    assert to_device([0.5], "cpu", dtype=torch.float32).tolist() == [0.5]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_device_on_cuda_is_ordered_with_the_stream():
    table = torch.arange(100, device="cuda") * 2
    ids = to_device(list(range(0, 100, 7)), torch.device("cuda"))
    assert ids.is_cuda and table[ids].tolist() == [2 * i for i in range(0, 100, 7)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_copy_lands_in_pinned_memory_and_in_the_store(tmp_path):
    device_tensor = torch.randn(64, 1500, device="cuda", dtype=torch.float16)
    expected = device_tensor.cpu()
    copy = to_host(device_tensor)
    device_tensor.zero_()  # queued after the copy on the same stream: the copy must not see it
    host = copy.wait()
    assert host.is_pinned() and torch.equal(host, expected)
    with WriteQueue() as queue:
        with Store(tmp_path / "s").writer(queue=queue) as writer:
            data = torch.randn(3, 5, device="cuda")
            writer.add_tensor("x", data, plugin="p")
            expected = data.cpu().numpy()
        trace = writer.wait()
    np.testing.assert_array_equal(trace.record("x"), expected)

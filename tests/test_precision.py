import pytest
import torch

from puma_mdm import precision
from puma_mdm.precision import autocast_dtype, native_bf16


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_where_the_hardware_has_it(monkeypatch, native):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    assert autocast_dtype("auto", "cpu") == (torch.bfloat16 if native else None)
    # explicit choices are obeyed whatever the hardware
    assert autocast_dtype("bf16", "cpu") == torch.bfloat16
    assert autocast_dtype("fp16", "cpu") == torch.float16
    assert autocast_dtype("fp32", "cpu") is None


def test_devices_without_bf16_kernels_are_not_native():
    assert native_bf16(torch.device("meta")) is False


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'bf32'"):
        autocast_dtype("bf32", "cpu")

"""Loading a deployed model on CPU: TorchScript, or a factory plus a state dict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamweights.adapters.torch import load_model
from streamweights.adapters.torch.examples import small_cnn

FACTORY = "streamweights.adapters.torch.examples:small_cnn"


def test_torchscript_and_factory_load_the_same_model(digit_model, digit_split, tmp_path):
    _, _, test_x, _ = digit_split
    scripted = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(digit_model), scripted)
    weights = tmp_path / "model.pt"
    torch.save(digit_model.state_dict(), weights)
    inputs = torch.from_numpy(test_x[:50])
    with torch.no_grad():
        expected = digit_model(inputs)
        for model in (load_model(torchscript=scripted),
                      load_model(factory=FACTORY, state_dict=weights,
                                 factory_options={"n_classes": 10})):
            assert not model.training
            np.testing.assert_array_equal(model(inputs).numpy(), expected.numpy())


def test_loading_errors_say_what_is_wrong(digit_model, tmp_path):
    with pytest.raises(ValueError, match="torchscript: no such file"):
        load_model(torchscript=tmp_path / "missing.ts")
    not_script = tmp_path / "weights.pt"
    torch.save(digit_model.state_dict(), not_script)
    with pytest.raises(ValueError, match="is not a TorchScript file"):
        load_model(torchscript=not_script)
    with pytest.raises(ValueError, match="exactly one of"):
        load_model()
    with pytest.raises(ValueError, match=r"expected 'package\.module:function'"):
        load_model(factory="no_colon")
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        load_model(factory="no_such_module:f")
    with pytest.raises(ValueError, match="has no function 'nope'"):
        load_model(factory="streamweights.adapters.torch.examples:nope")
    smaller = tmp_path / "smaller.pt"
    torch.save(small_cnn(width=16).state_dict(), smaller)
    with pytest.raises(ValueError,
                       match=r"wrong shape for 0\.bias: file has \(8,\), model has \(16,\)"):
        load_model(factory=FACTORY, state_dict=smaller)
    whole_model = tmp_path / "whole.pt"
    torch.save([1, 2, 3], whole_model)
    with pytest.raises(ValueError, match="not a state dict"):
        load_model(factory=FACTORY, state_dict=whole_model)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in digit_model.state_dict().items() if not k.startswith("12.")},
               partial)
    with pytest.raises(ValueError, match=r"missing 12\.bias, 12\.weight"):
        load_model(factory=FACTORY, state_dict=partial)

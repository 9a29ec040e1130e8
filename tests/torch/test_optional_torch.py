"""torch is an optional extra: streamweights imports and runs without it, and a torch
feature used without it says what to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_streamweights_works_without_torch_and_names_the_extra():
    """Scenario: a fresh interpreter in which ``import torch`` and ``import safetensors``
    fail (as on a machine without the extra).
    We expect: the package, its config, pipeline and service import; the torch
    sub-package imports; using a torch feature raises TorchMissingError saying
    "install streamweights[torch]"; a config with a torch stream fails with a
    ConfigError naming the stream."""
    script = textwrap.dedent("""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "safetensors"):
                    raise ImportError(f"No module named {name!r}")
                return None

        sys.meta_path.insert(0, NoTorch())
        import streamweights, streamweights.config, streamweights.pipeline
        import streamweights.runtime.service
        from streamweights.adapters.torch import TorchMissingError, TestTimeAdapter
        from streamweights.adapters.torch.weights_file import encode_weights
        import numpy as np
        for attempt in (lambda: TestTimeAdapter(object(), 10, (1, 8, 8)),
                        lambda: encode_weights({"w": np.zeros(2)})):
            try:
                attempt()
            except TorchMissingError as error:
                assert "install streamweights[torch]" in str(error), error
            else:
                raise AssertionError("no error")
        config = streamweights.config.parse_config({"streams": [{
            "name": "s", "classes": 10, "models": ["cnn"],
            "torch": {"factory": "m:f", "input_shape": [4]}}]})
        try:
            streamweights.pipeline.Pipeline(config.streams)
        except streamweights.config.ConfigError as error:
            assert str(error).startswith("streams[s].torch: torch is not installed"), error
            assert "install streamweights[torch]" in str(error), error
        else:
            raise AssertionError("no error")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"

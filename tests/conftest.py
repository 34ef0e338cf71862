import os

import pytest
import torch

# The devices the `device` fixture runs every test on: $OBJX_TEST_DEVICES, a comma list such as
# "cuda" (what bench/gpu_check.sh sets, so the GPU minutes go to CUDA) or "cpu,cuda"; by default
# cpu, plus cuda when torch sees one.
KNOWN_DEVICES = ("cpu", "cuda")


def _available(device: str) -> bool:
    return device == "cpu" or (device == "cuda" and torch.cuda.is_available())


def _requested_devices():
    """(devices, error): the devices to test on, or the reason the request cannot be met."""
    spec = os.environ.get("OBJX_TEST_DEVICES", "").strip()
    if not spec:
        return [d for d in KNOWN_DEVICES if _available(d)], None
    devices = list(dict.fromkeys(d.strip().lower() for d in spec.split(",") if d.strip()))
    unknown = [d for d in devices if d not in KNOWN_DEVICES]
    if unknown or not devices:
        return [], (f"OBJX_TEST_DEVICES={spec!r}: unknown device(s) {unknown or spec!r}; "
                    f"give a comma list of {', '.join(KNOWN_DEVICES)}")
    missing = [d for d in devices if not _available(d)]
    if missing:
        return [], (f"OBJX_TEST_DEVICES={spec!r} asks for {', '.join(missing)}, which is not available here "
                    f"(torch {torch.__version__}, torch.cuda.is_available() = {torch.cuda.is_available()})")
    return devices, None


DEVICES, _DEVICES_ERROR = _requested_devices()


def pytest_configure(config):
    if _DEVICES_ERROR:
        raise pytest.UsageError(_DEVICES_ERROR)


def pytest_report_header(config):
    return f"objx test devices: {', '.join(DEVICES)}"


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param

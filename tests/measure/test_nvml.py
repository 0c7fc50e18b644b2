"""NVML boundary: error mapping, probing, CUDA_VISIBLE_DEVICES mapping, readings, inventory."""

from __future__ import annotations

import pytest

from charbench.errors import (
    DeviceError,
    NvmlError,
    NvmlInvalidArgumentError,
    NvmlNoPermissionError,
    NvmlNotAvailableError,
    NvmlNotSupportedError,
)
from charbench.measure.nvml import Nvml, gpu_inventory, normalize_pci_bus_id, nvml_available
from charbench.measure.testing import FakeGpu, fake_nvml


def three_gpus() -> list[FakeGpu]:
    return [
        FakeGpu(uuid="GPU-aaaa0000-0000-0000-0000-000000000000", pci_bus_id="00000000:18:00.0"),
        FakeGpu(uuid="GPU-bbbb0000-0000-0000-0000-000000000000", pci_bus_id="00000000:3B:00.0",
                mig_uuids=["MIG-12345678-aaaa-bbbb-cccc-000000000001"]),
        FakeGpu(uuid="GPU-bbbc0000-0000-0000-0000-000000000000", pci_bus_id="00000000:86:00.0"),
    ]


# -- errors and probing -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "cls", "message"),
    [
        (4, NvmlNoPermissionError,
         "reading the energy counter: insufficient permissions (NVML error 4); run as root "
         "(e.g. `sudo -E $(which charbench) ...`; in a container add --cap-add SYS_ADMIN)"),
        (3, NvmlNotSupportedError, "reading the energy counter: not supported on this GPU (NVML error 3)"),
        (13, NvmlNotSupportedError, "reading the energy counter: not in this driver (NVML error 13)"),
        (2, NvmlInvalidArgumentError, "reading the energy counter: invalid argument (NVML error 2)"),
        (9, NvmlNotAvailableError, "reading the energy counter: the NVIDIA driver is not loaded (NVML error 9)"),
        (15, NvmlError, "reading the energy counter: GPU is lost (NVML error 15)"),
    ],
)
def test_nvml_error_codes_map_to_typed_errors(nvml_fake, code, cls, message):
    gpu = FakeGpu(errors={"nvmlDeviceGetTotalEnergyConsumption": code})
    nvml_fake([gpu])
    with Nvml() as nvml, pytest.raises(cls) as info:
        nvml.total_energy_mj(nvml.visible_gpus()[0])
    assert type(info.value) is cls
    assert str(info.value) == message
    assert info.value.code == code


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"init_error": 12},
         "initializing NVML: libnvidia-ml.so.1 was not found (no NVIDIA driver installed?) (NVML error 12)"),
        ({"init_error": 9}, "initializing NVML: the NVIDIA driver is not loaded (NVML error 9)"),
        ({"missing": True},
         "nvidia-ml-py is not installed (No module named 'pynvml'); install it with `pip install nvidia-ml-py`"),
    ],
)
def test_nvml_available_never_raises_and_says_why(kwargs, reason):
    with fake_nvml(**kwargs):
        assert nvml_available() == (False, reason)
        assert gpu_inventory() == ([], reason)


def test_nvml_available_true_with_driver(nvml_fake):
    nvml_fake()
    assert nvml_available() == (True, "")


def test_init_is_reference_counted(nvml_fake):
    nv = nvml_fake()
    nvml = Nvml()
    nvml.init()
    nvml.init()
    nvml.shutdown()
    assert nv.nvmlInit.call_count == 1
    assert nv.nvmlShutdown.call_count == 0
    assert nvml.initialized
    nvml.shutdown()
    nvml.shutdown()  # extra shutdowns are harmless
    assert nv.nvmlShutdown.call_count == 1
    with pytest.raises(NvmlNotAvailableError, match="NVML is not initialized"):
        nvml.device_count()


# -- CUDA_VISIBLE_DEVICES ------------------------------------------------------------------
def visible(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    with Nvml() as nvml:
        gpus = nvml.visible_gpus()
        return [(g.visible_index, g.nvml_index, g.mig_uuid) for g in gpus], nvml.notes


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (None, [(0, 0, None), (1, 1, None), (2, 2, None)]),
        ("2,0", [(0, 2, None), (1, 0, None)]),
        (" 1 ", [(0, 1, None)]),
        ("GPU-bbbc0000-0000-0000-0000-000000000000,GPU-aaaa", [(0, 2, None), (1, 0, None)]),
        ("0000:3b:00.0", [(0, 1, None)]),
        ("MIG-12345678-aaaa-bbbb-cccc-000000000001", [(0, 1, "MIG-12345678-aaaa-bbbb-cccc-000000000001")]),
        ("MIG-GPU-aaaa0000-0000-0000-0000-000000000000/1/0",
         [(0, 0, "MIG-GPU-aaaa0000-0000-0000-0000-000000000000/1/0")]),
    ],
)
def test_visible_gpus_maps_cuda_visible_devices(nvml_fake, monkeypatch, env, expected):
    nvml_fake(three_gpus())
    assert visible(monkeypatch, env)[0] == expected


@pytest.mark.parametrize(
    ("env", "expected", "note"),
    [
        ("0,7,1", [(0, 0, None)],
         "CUDA_VISIBLE_DEVICES entry '7' is not a GPU index (NVML sees 3 GPU(s)); "
         "ignoring it and the entries after it"),
        ("-1", [], "CUDA_VISIBLE_DEVICES entry '-1' is not a GPU index (NVML sees 3 GPU(s)); "
         "ignoring it and the entries after it"),
        ("", [], "CUDA_VISIBLE_DEVICES is set but empty; no GPU is visible"),
        ("1,,2", [(0, 1, None)], "CUDA_VISIBLE_DEVICES entry '' is empty; ignoring it and the entries after it"),
        ("GPU-bbb", [], "CUDA_VISIBLE_DEVICES entry 'GPU-bbb' is an ambiguous UUID prefix; "
         "ignoring it and the entries after it"),
        ("1,GPU-ffff", [(0, 1, None)], "CUDA_VISIBLE_DEVICES entry 'GPU-ffff' matches no GPU UUID; "
         "ignoring it and the entries after it"),
        ("MIG-00000000-0000-0000-0000-000000000000", [],
         "CUDA_VISIBLE_DEVICES entry 'MIG-00000000-0000-0000-0000-000000000000' matches no MIG device; "
         "ignoring it and the entries after it"),
        ("0,0", [(0, 0, None)], "CUDA_VISIBLE_DEVICES entry '0' repeats a GPU already listed; "
         "ignoring it and the entries after it"),
        ("nvidia0", [], "CUDA_VISIBLE_DEVICES entry 'nvidia0' is not an index, a GPU-/MIG- UUID or a PCI bus id; "
         "ignoring it and the entries after it"),
    ],
)
def test_visible_gpus_stops_at_bad_entries_like_cuda(nvml_fake, monkeypatch, env, expected, note):
    nvml_fake(three_gpus())
    gpus, notes = visible(monkeypatch, env)
    assert gpus == expected
    assert notes == [note]


def test_mig_entry_notes_whole_gpu_energy(nvml_fake, monkeypatch):
    nvml_fake(three_gpus())
    _, notes = visible(monkeypatch, "MIG-12345678-aaaa-bbbb-cccc-000000000001")
    assert notes == [
        "CUDA_VISIBLE_DEVICES entry 'MIG-12345678-aaaa-bbbb-cccc-000000000001' is a MIG instance; "
        "NVML energy and power cover the whole GPU GPU-bbbb0000-0000-0000-0000-000000000000"
    ]


def test_mixed_models_warn_about_cuda_device_order(nvml_fake, monkeypatch):
    nvml_fake([FakeGpu(uuid="GPU-a", name="NVIDIA A100-SXM4-80GB"),
               FakeGpu(uuid="GPU-b", pci_bus_id="00000000:19:00.0")])
    _, notes = visible(monkeypatch, None)
    assert notes == [
        "GPUs of different models with CUDA_DEVICE_ORDER unset: CUDA's default FASTEST_FIRST order "
        "may differ from NVML's PCI order; set CUDA_DEVICE_ORDER=PCI_BUS_ID"
    ]
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    assert visible(monkeypatch, None)[1] == []


def test_gpu_by_pci_bus_id_and_normalization(nvml_fake):
    nvml_fake(three_gpus())
    assert normalize_pci_bus_id("00000000:3B:00.0") == "0000:3b:00.0"
    assert normalize_pci_bus_id("3b:00.0") == "0000:3b:00.0"
    with Nvml() as nvml:
        assert nvml.gpu_by_pci_bus_id("0000:86:00.0").uuid == "GPU-bbbc0000-0000-0000-0000-000000000000"
        with pytest.raises(DeviceError, match=r"^no GPU at PCI bus id 0000:99:00.0 \(NVML sees 3 GPU\(s\)\)$"):
            nvml.gpu_by_pci_bus_id("0000:99:00.0")


# -- readings ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("gpu", "expected"),
    [
        (FakeGpu(), (310.0, "instant")),                                   # field value exposed
        (FakeGpu(instant_power_mw=None), (300.0, "average-1s")),           # Hopper: 1 s average
        (FakeGpu(instant_power_mw=None, arch=7, name="NVIDIA A100-SXM4-80GB"), (300.0, "instant")),
        (FakeGpu(instant_power_mw=None, arch=7, name="NVIDIA A10"), (300.0, "average-1s")),
        (FakeGpu(instant_power_mw=None, arch=6, name="Tesla T4"), (300.0, "instant")),
    ],
)
def test_power_w_kind(nvml_fake, gpu, expected):
    nvml_fake([gpu])
    with Nvml() as nvml:
        assert nvml.power_w(nvml.visible_gpus()[0]) == expected


def test_power_w_skips_instant_field_after_it_failed_once(nvml_fake):
    nv = nvml_fake([FakeGpu(instant_power_mw=None)])
    with Nvml() as nvml:
        gpu = nvml.visible_gpus()[0]
        for _ in range(3):
            nvml.power_w(gpu)
        assert nv.nvmlDeviceGetFieldValues.call_count == 1
        assert nvml.power_w(gpu, instant=False) == (300.0, "average-1s")


def test_readings_and_units(nvml_fake):
    nvml_fake([FakeGpu(throttle_mask=0x4 | 0x20 | 0x1000, arch=9)])
    with Nvml() as nvml:
        g = nvml.visible_gpus()[0]
        assert (g.name, g.pci_bus_id) == ("NVIDIA H100 80GB HBM3", "0000:18:00.0")
        assert nvml.clocks_mhz(g) == (1980, 2619)
        assert nvml.max_clocks_mhz(g) == (1980, 2619)
        assert nvml.temperature_c(g) == 45
        assert nvml.utilization_pct(g) == (100, 40)
        assert nvml.throttle_reasons(g) == (0x1024, ["SwPowerCap", "SwThermalSlowdown", "unknown(0x1000)"])
        assert nvml.power_limit_w(g) == 700.0
        assert nvml.enforced_power_limit_w(g) == 700.0
        assert nvml.power_limit_constraints_w(g) == (200.0, 700.0)
        assert nvml.default_power_limit_w(g) == 700.0
        assert nvml.memory_info_bytes(g) == (80 * 1024**3, 79 * 1024**3)
        assert nvml.driver_version() == "550.54.15"
        assert nvml.architecture(g) == "hopper"
        assert nvml.energy_counter_supported(g) is True
        assert nvml.mig_mode(g) == "disabled"
        assert nvml.persistence_mode(g) is True
        assert nvml.supported_sm_clocks_mhz(g)[:2] == [345, 360]


def test_throttle_reasons_fall_back_to_the_deprecated_call(nvml_fake):
    nv = nvml_fake([FakeGpu(throttle_mask=0x40, errors={"nvmlDeviceGetCurrentClocksEventReasons": 13})])
    with Nvml() as nvml:
        assert nvml.throttle_reasons(nvml.visible_gpus()[0]) == (0x40, ["HwThermalSlowdown"])
    nv.nvmlDeviceGetCurrentClocksThrottleReasons.assert_called_once()


def test_pre_volta_has_no_energy_counter(nvml_fake):
    nv = nvml_fake([FakeGpu(arch=4, name="Tesla P100-PCIE-16GB")])
    with Nvml() as nvml:
        assert nvml.energy_counter_supported(nvml.visible_gpus()[0]) is False
    nv.nvmlDeviceGetTotalEnergyConsumption.assert_not_called()


def test_gpu_inventory_records_reasons_for_unknown_fields(nvml_fake, monkeypatch):
    nvml_fake([
        FakeGpu(mig_mode=None, persistence_mode=None,
                errors={"nvmlDeviceGetPowerManagementLimitConstraints": 4, "nvmlDeviceGetClockInfo": 999}),
        FakeGpu(uuid="GPU-2", pci_bus_id="00000000:19:00.0", arch=4, name="NVIDIA H100 80GB HBM3"),
    ])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    rows, reason = gpu_inventory()
    assert reason is None
    assert [r["uuid"] for r in rows] == ["GPU-2", "GPU-11111111-2222-3333-4444-555555555555"]
    assert rows[0]["energy_counter"] is False
    row = rows[1]
    assert row["index"] == 1
    assert row["power_limit_min_w"] is None and row["power_limit_max_w"] is None
    assert row["power_limit_min_w_reason"] == (
        "reading the power-limit range: insufficient permissions (NVML error 4); run as root "
        "(e.g. `sudo -E $(which charbench) ...`; in a container add --cap-add SYS_ADMIN)"
    )
    assert row["sm_clock_mhz"] is None
    assert row["sm_clock_mhz_reason"] == "reading the SM clock: Unknown Error (NVML error 999)"
    assert row["mig_mode"] is None and row["mig_mode_reason"] == "MIG not supported on this GPU"
    assert row["persistence_mode"] is None
    assert row["persistence_mode_reason"] == "persistence mode not supported on this GPU"
    assert row["power_limit_w"] == 700.0 and "power_limit_w_reason" not in row
    assert row["memory_total_mib"] == 81920


def test_importing_measure_does_not_import_pynvml_or_torch():
    import subprocess
    import sys

    code = ("import sys, charbench.measure, charbench.measure.testing; "
            "print('pynvml' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # testing.py imports pynvml only when a fake is built, not at import
    assert out.stdout.strip() == "False False"

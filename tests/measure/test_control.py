"""GPU clock/power-limit control: validation, permission errors, restore on every exit path."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import pytest

from charbench.errors import ConfigError, DeviceError, MeasurementError, NvmlNoPermissionError
from charbench.measure.control import GpuControl, locked_clocks, power_limit
from charbench.measure.testing import FakeGpu

ROOT_FIX = "run charbench as root (sudo -E, or a container with --cap-add SYS_ADMIN)"


@pytest.fixture
def handlers() -> Iterator[None]:
    """Put SIGINT/SIGTERM handlers back whatever a test did."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def gpu_state(gpu: FakeGpu) -> tuple:
    return gpu.locked_clocks_mhz, gpu.power_limit_mw


def test_changes_are_applied_then_restored(nvml_fake, handlers):
    gpu = FakeGpu()
    nvml_fake([gpu])
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with GpuControl([0]) as ctl:
        ctl.lock_sm_clock(1410)
        assert ctl.set_power_limit(300) == 300.0
        assert gpu_state(gpu) == ((1410, 1410), 300_000)
        assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]
        ctl.lock_sm_clock((1200, 1500))
        ctl.set_power_limit(350)
        assert gpu_state(gpu) == ((1200, 1500), 350_000)
    assert gpu_state(gpu) == (None, 700_000)  # the limit read before the first change
    assert {s: signal.getsignal(s) for s in before} == before
    assert ctl.restore() == []  # idempotent


def test_restored_on_exception(nvml_fake, handlers):
    gpu = FakeGpu()
    nv = nvml_fake([gpu])
    with pytest.raises(RuntimeError, match="workload failed"):
        with GpuControl([0]) as ctl:
            ctl.lock_sm_clock(1410)
            ctl.set_power_limit(250)
            raise RuntimeError("workload failed")
    assert gpu_state(gpu) == (None, 700_000)
    nv.nvmlDeviceResetGpuLockedClocks.assert_called_once_with(gpu)


def test_context_manager_helpers(nvml_fake, handlers):
    gpus = [FakeGpu(), FakeGpu(uuid="GPU-2", pci_bus_id="00000000:19:00.0")]
    nvml_fake(gpus)
    with locked_clocks([0, 1], 990):
        assert [g.locked_clocks_mhz for g in gpus] == [(990, 990), (990, 990)]
    with power_limit([1], 400):
        assert [g.power_limit_mw for g in gpus] == [700_000, 400_000]
    assert [gpu_state(g) for g in gpus] == [(None, 700_000), (None, 700_000)]


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda c: c.lock_sm_clock(3000), "--sm-freq 3000 MHz is outside GPU 0's supported SM clocks 345-1980 MHz"),
        (lambda c: c.lock_sm_clock((200, 1000)),
         "--sm-freq 200-1000 MHz is outside GPU 0's supported SM clocks 345-1980 MHz"),
        (lambda c: c.lock_sm_clock((1500, 1000)), "--sm-freq 1500-1000 MHz: need a positive clock (or min <= max)"),
        (lambda c: c.set_power_limit(100), "--power-limit 100 W is outside GPU 0's allowed range 200-700 W"),
        (lambda c: c.set_power_limit(712.5), "--power-limit 712.5 W is outside GPU 0's allowed range 200-700 W"),
    ],
)
def test_out_of_range_values_name_the_option(nvml_fake, handlers, action, message):
    gpu = FakeGpu()
    nv = nvml_fake([gpu])
    with GpuControl([0]) as ctl:
        with pytest.raises(ConfigError) as info:
            action(ctl)
        assert str(info.value) == message
    nv.nvmlDeviceSetGpuLockedClocks.assert_not_called()
    nv.nvmlDeviceSetPowerManagementLimit.assert_not_called()


def test_without_root_the_error_names_the_fix(nvml_fake, handlers):
    gpu = FakeGpu(root=False)
    nv = nvml_fake([gpu])
    with GpuControl([0]) as ctl:
        with pytest.raises(NvmlNoPermissionError) as info:
            ctl.lock_sm_clock(1410)
        assert str(info.value) == f"--sm-freq: locking GPU 0's SM clock needs root (NVML error 4); {ROOT_FIX}, or drop --sm-freq"
        with pytest.raises(NvmlNoPermissionError) as info:
            ctl.set_power_limit(300)
        assert str(info.value) == (f"--power-limit: setting GPU 0's power limit needs root (NVML error 4); "
                                   f"{ROOT_FIX}, or drop --power-limit")
    # nothing was changed, so nothing is "restored" (which would fail again without root)
    nv.nvmlDeviceResetGpuLockedClocks.assert_not_called()
    assert nv.nvmlDeviceSetPowerManagementLimit.call_count == 1


def test_enforced_limit_is_verified(nvml_fake, handlers):
    gpu = FakeGpu(enforced_power_limit_mw=250_000)
    nvml_fake([gpu])
    with pytest.raises(DeviceError) as info:
        with GpuControl([0]) as ctl:
            ctl.set_power_limit(300)
    assert str(info.value) == ("--power-limit 300 W: GPU 0 enforces 250 W after the change "
                               "(another, lower limit applies; see `nvidia-smi -q -d POWER`)")
    assert gpu.power_limit_mw == 700_000


def test_restore_continues_past_a_failing_gpu(nvml_fake, handlers):
    gpus = [FakeGpu(), FakeGpu(uuid="GPU-2", pci_bus_id="00000000:19:00.0")]
    nvml_fake(gpus)
    with pytest.raises(MeasurementError) as info:
        with GpuControl([0, 1]) as ctl:
            ctl.lock_sm_clock(1410)
            gpus[0].errors["nvmlDeviceResetGpuLockedClocks"] = 15
    assert str(info.value) == ("could not restore GPU settings: GPU 0: resetting locked clocks failed: "
                               "resetting locked SM clocks: GPU is lost (NVML error 15)")
    assert gpus[1].locked_clocks_mhz is None


def test_unknown_gpu_index(nvml_fake, handlers):
    nv = nvml_fake()
    with pytest.raises(DeviceError, match=r"^--gpus: GPU 3 is not visible; 1 visible GPU\(s\)$"):
        with GpuControl([3]):
            pass
    assert nv.nvmlShutdown.call_count == 1


def test_sigint_restores_then_chains(nvml_fake, handlers):
    gpu = FakeGpu()
    nvml_fake([gpu])
    seen = []

    def previous(signum, frame):
        seen.append(gpu_state(gpu))  # what the earlier handler sees: settings already restored
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, previous)
    with pytest.raises(KeyboardInterrupt):
        with GpuControl([0]) as ctl:
            ctl.lock_sm_clock(1410)
            ctl.set_power_limit(300)
            signal.raise_signal(signal.SIGINT)
            pytest.fail("the handler did not interrupt")
    assert seen == [(None, 700_000)]
    assert signal.getsignal(signal.SIGINT) is previous


def test_sigint_with_default_handler_raises_keyboard_interrupt(nvml_fake, handlers):
    gpu = FakeGpu()
    nvml_fake([gpu])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt):
        with GpuControl([0]) as ctl:
            ctl.lock_sm_clock(1410)
            signal.raise_signal(signal.SIGINT)
    assert gpu.locked_clocks_mhz is None


def test_sigterm_restores_then_chains_to_previous_handler(nvml_fake, handlers):
    gpu = FakeGpu()
    nvml_fake([gpu])

    class Terminated(Exception):
        pass

    seen = []

    def previous(signum, frame):
        seen.append((signum, gpu_state(gpu)))
        raise Terminated

    signal.signal(signal.SIGTERM, previous)  # pytest survives even if ours were missing
    with pytest.raises(Terminated):
        with GpuControl([0]) as ctl:
            ctl.set_power_limit(300)
            ctl.lock_sm_clock(1410)
            signal.raise_signal(signal.SIGTERM)
    assert seen == [(signal.SIGTERM, (None, 700_000))]


def test_ignored_sigterm_stays_ignored(nvml_fake, handlers):
    gpu = FakeGpu()
    nvml_fake([gpu])
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with GpuControl([0]) as ctl:
        ctl.lock_sm_clock(1410)
        signal.raise_signal(signal.SIGTERM)
        assert gpu.locked_clocks_mhz == (1410, 1410)  # the run goes on with its settings
    assert gpu.locked_clocks_mhz is None
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


def test_outside_main_thread_relies_on_exit_paths(nvml_fake, handlers):
    gpu = FakeGpu()
    nvml_fake([gpu])
    before = signal.getsignal(signal.SIGTERM)
    errors = []

    def body():
        try:
            with GpuControl([0]) as ctl:
                ctl.lock_sm_clock(1410)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert errors == [] and gpu.locked_clocks_mhz is None
    assert signal.getsignal(signal.SIGTERM) is before


CHILD = textwrap.dedent(
    """
    import sys, time
    from charbench.measure.control import GpuControl
    from charbench.measure.testing import FakeGpu, fake_nvml

    gpu = FakeGpu()

    def report():
        print(f"locked={gpu.locked_clocks_mhz} limit_mw={gpu.power_limit_mw}", flush=True)

    if sys.argv[1] == "sigterm":
        try:
            with fake_nvml([gpu]), GpuControl([0]) as ctl:
                ctl.lock_sm_clock(1410)
                ctl.set_power_limit(300)
                report()
                print("ready", flush=True)
                time.sleep(30)
        finally:
            report()
    else:  # atexit: activated, changed, never restored explicitly
        import atexit
        atexit.register(report)  # runs after GpuControl's hook (atexit is LIFO)
        with fake_nvml([gpu]):
            ctl = GpuControl([0])
            ctl.activate()
            ctl.lock_sm_clock(1410)
            ctl.set_power_limit(300)
            report()
    """
)


def test_sigterm_in_a_subprocess_restores_and_exits_143(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), "sigterm"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked=(1410, 1410) limit_mw=300000"
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert out.strip() == "locked=None limit_mw=700000"


def test_atexit_safety_net_in_a_subprocess(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    done = subprocess.run([sys.executable, str(script), "atexit"], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["locked=(1410, 1410) limit_mw=300000", "locked=None limit_mw=700000"]
